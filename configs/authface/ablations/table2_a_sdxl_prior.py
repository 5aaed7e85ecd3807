# AuthFace Table 2 (a) (arXiv 2410.09864, section 4.3): the original SDXL as the diffusion prior - ControlNet
# initialised from, and steering, the base SDXL UNet - without the facial loss. The row's check marks
# did not survive the paper's text; section 4.3 compares (a) and (b) only in the prior, so both train
# without L_facial, as (b) does.
_base_ = ['../authface_stage2_sdxl.py']

model = dict(backbone=dict(unet_weights=None), facial_loss=None)
optim_wrapper = dict(facial_loss=None)
strategy = dict(shard_modules=['backbone.unet', 'backbone.controlnet'])
