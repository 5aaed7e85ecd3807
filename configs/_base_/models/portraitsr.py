# PortraitSR (AAAI 2026) network as published: latent 384 x H/8 x W/8 (8 x dim 48), dictionary 512 x 384 with
# N(0, 0.02^2) init, 19 parsing classes; Restormer-sized encoder/decoder where the paper gives no depths/heads
# (see PortraitSRNet's docstring for every choice).
portraitsr_generator = dict(
    dim=48, depths=(4, 6, 6, 8), heads=(1, 2, 4, 8), ffn_expansion=2.66, refine_depth=4,
    dict_size=512, dict_channels=384, dict_init_std=0.02,
    num_parsing_classes=19, parsing_depth=1, num_regions=4, gamma_offset=0.0, global_residual=False)

