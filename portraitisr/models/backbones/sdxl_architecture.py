"""Architecture configs of Stable Diffusion XL 1.0-base, AuthFace's prior (AuthFace, arXiv 2410.09864, sections 3.1 and
4.1).

The published ``config.json`` values of ``stabilityai/stable-diffusion-xl-base-1.0`` (``unet/``, ``vae/``,
``scheduler/``, ``text_encoder/``, ``text_encoder_2/``), next to :mod:`.sd21_architecture`. They build the real
architecture with random weights and no download (parameter counts, memory and step-time benchmarks); training
and inference load the released folder through ``pretrained``.

What SDXL adds to the SD 2.1 UNet (diffusers ``UNet2DConditionModel``, ``addition_embed_type='text_time'``):
the timestep embedding is summed with ``add_embedding(concat(text_embeds, time_embeds))``, where ``text_embeds`` is
the pooled, projected output of the second text encoder (1280) and ``time_embeds`` the sinusoidal embeddings (256
each) of the six "micro-conditioning" numbers ``time_ids = (orig_h, orig_w, crop_top, crop_left, target_h,
target_w)``: ``1280 + 6 * 256 = 2816 = projection_class_embeddings_input_dim``. The cross-attention states are the
penultimate hidden states of the two text encoders concatenated: ``768 + 1280 = 2048 = cross_attention_dim``.
"""
from .sd21_architecture import SD21_SCHEDULER_CONFIG, SD21_VAE_CONFIG

SDXL_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'),
    up_block_types=('CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type='text_time',
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)

# The VAE and the training noise schedule are SD 2.1's but for the VAE's sample size and latent scaling factor, and
# the scheduler's timestep spacing (the released folder ships an EulerDiscreteScheduler config; the training noise
# schedule is this one, which :class:`diffusers.DDPMScheduler` reads from it).
SDXL_VAE_CONFIG = dict(SD21_VAE_CONFIG, sample_size=1024, scaling_factor=0.13025)
SDXL_SCHEDULER_CONFIG = dict(SD21_SCHEDULER_CONFIG, timestep_spacing='leading')

# text_encoder/: OpenAI CLIP ViT-L/14 (CLIPTextModel); text_encoder_2/: OpenCLIP ViT-bigG/14
# (CLIPTextModelWithProjection, whose projected pooled output is the UNet's ``text_embeds``).
SDXL_TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act='quick_gelu',
    projection_dim=768,
)
SDXL_TEXT_ENCODER_2_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act='gelu',
    projection_dim=1280,
)


def sdxl_time_ids(batch: int, original_size, crop_top_left=(0, 0), target_size=None, device=None, dtype=None):
    """SDXL's micro-conditioning ``time_ids``: ``B x 6`` rows ``(orig_h, orig_w, crop_top, crop_left, target_h,
    target_w)`` (diffusers ``StableDiffusionXLPipeline._get_add_time_ids``); ``target_size`` defaults to
    ``original_size``."""
    import torch

    target_size = original_size if target_size is None else target_size
    row = [float(v) for v in (*original_size, *crop_top_left, *target_size)]
    if len(row) != 6:
        raise ValueError(f'time_ids need (h, w) sizes and a (top, left) crop, got {original_size}, {crop_top_left}, '
                         f'{target_size}')
    return torch.tensor([row] * batch, device=device, dtype=dtype or torch.float32)
