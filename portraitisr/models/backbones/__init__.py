from .latent_diffusion import ControlNetDiffusion, LatentDiffusion, load_unet_weights
from .lora_targets import pisasr_unet_lora_targets, unet_lora_targets, vae_encoder_lora_targets
from .one_step_sd import OneStepSD, widen_conv_in
from .osediff_checkpoint import export_osediff_checkpoint, load_osediff_checkpoint
from .pisasr_checkpoint import export_pisasr_checkpoint, load_pisasr_checkpoint
from .pisasr_sd import PiSASD
from .sdxl_architecture import sdxl_time_ids

__all__ = ['OneStepSD', 'widen_conv_in', 'unet_lora_targets', 'vae_encoder_lora_targets',
           'export_osediff_checkpoint', 'load_osediff_checkpoint', 'PiSASD', 'pisasr_unet_lora_targets',
           'export_pisasr_checkpoint', 'load_pisasr_checkpoint', 'LatentDiffusion', 'ControlNetDiffusion',
           'load_unet_weights', 'sdxl_time_ids']
