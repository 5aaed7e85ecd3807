# Tiny random SDXL-shaped components (diffusers' tests/pipelines/controlnet/test_controlnet_sdxl.py
# get_dummy_components, with our tiny VAE): the SDXL architecture family (added text/time embeddings,
# two CLIP text encoders whose penultimate states are concatenated, ControlNet from the UNet), small
# enough to train on 2 CPU cores. AuthFace's debug configs and tests build these.
_base_ = ['./tiny_sd.py']

tiny_sdxl_unet_cfg = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64),
    down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
    up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type='text_time',
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=80,  # 6 x 8 time ids + 32 pooled text
    cross_attention_dim=64,  # 32 + 32 from the two text encoders
    norm_num_groups=8,
)
tiny_sdxl_text_encoder_cfg = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=5,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act='gelu',
    projection_dim=32,
)
tiny_sdxl_text_encoder = dict(type='SDXLTextEncoder', text_encoder_cfg=tiny_sdxl_text_encoder_cfg,
                              text_encoder_2_cfg=tiny_sdxl_text_encoder_cfg)
# Stage I: the whole tiny UNet trains.
tiny_sdxl_finetune_backbone = dict(
    type='LatentDiffusion',
    unet_cfg=tiny_sdxl_unet_cfg,
    vae_cfg={{_base_.tiny_vae_cfg}},
    scheduler_cfg={{_base_.sd21_scheduler_cfg}},
    train_unet=True,
    frozen_dtype='float32',
)
# Stage II: a ControlNet on the frozen tiny UNet; four conditioning widths = three stride-2 steps, so the
# condition image is 8x the latent (the tiny VAE's factor), as SDXL's (16, 32, 96, 256).
tiny_sdxl_controlnet_backbone = dict(
    type='ControlNetDiffusion',
    unet_cfg=tiny_sdxl_unet_cfg,
    vae_cfg={{_base_.tiny_vae_cfg}},
    scheduler_cfg={{_base_.sd21_scheduler_cfg}},
    conditioning_embedding_out_channels=(8, 8, 16, 16),
    frozen_dtype='float32',
)
# Eye / mouth discriminators of AuthFace's facial loss on 4-channel latent crops, GFP-GAN's layout at 1/4 width.
tiny_facial_discriminator = dict(type='FacialComponentDiscriminator', in_channels=4, base_channels=16)
