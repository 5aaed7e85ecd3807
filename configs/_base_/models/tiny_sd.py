# Tiny random Stable-Diffusion-shaped components (diffusers-test style) for the debug configs and
# the tests: the same architecture families as SD 2.1 (VAE downscale 8, cross-attention UNet,
# CLIP text model with the real CLIP tokenizer), small enough to train on 2 CPU cores.
tiny_unet_cfg = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
    attention_head_dim=(2, 4),
    cross_attention_dim=32,
    use_linear_projection=True,
    norm_num_groups=8,
)
tiny_vae_cfg = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=('DownEncoderBlock2D', ) * 4,
    up_block_types=('UpDecoderBlock2D', ) * 4,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    scaling_factor=0.18215,
)
# The real SD 2.1 noise schedule: the one-step maths needs its alphas.
sd21_scheduler_cfg = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule='scaled_linear',
    prediction_type='epsilon',
    clip_sample=False,
    steps_offset=1,
)
tiny_text_encoder_cfg = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
)
tiny_backbone = dict(
    type='OneStepSD',
    unet_cfg=tiny_unet_cfg,
    vae_cfg=tiny_vae_cfg,
    scheduler_cfg=sd21_scheduler_cfg,
    timestep=999,
    lora_rank=4,
    lora_alpha=8,
    frozen_dtype='float32',
)
tiny_text_encoder = dict(type='CLIPTextEncoder', text_encoder_cfg=tiny_text_encoder_cfg)
# OSEDiff's VSD regulariser on the tiny UNet (rank 4, alpha 8, CFG 7.5 as the SD 2.1 configs).
tiny_regularizer = dict(
    type='VSDRegularizer',
    unet_cfg=tiny_unet_cfg,
    scheduler_cfg=sd21_scheduler_cfg,
    lora_rank=4,
    lora_alpha=8,
    cfg_scale=7.5)
# HeadsUp's 9-channel conv_in: LQ latent + reference latent + face mask (new channels zero).
tiny_headsup_backbone = dict(tiny_backbone, in_channels=9)
