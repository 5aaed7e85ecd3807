from .lora_targets import unet_lora_targets, vae_encoder_lora_targets
from .one_step_sd import OneStepSD, widen_conv_in
from .osediff_checkpoint import export_osediff_checkpoint, load_osediff_checkpoint

__all__ = ['OneStepSD', 'widen_conv_in', 'unet_lora_targets', 'vae_encoder_lora_targets',
           'export_osediff_checkpoint', 'load_osediff_checkpoint']
