# AuthFace Table 2 (b) (arXiv 2410.09864, section 4.3): the face-oriented fine-tuned SDXL (stage I) as the
# prior, trained with the noise loss alone (no L_facial).
_base_ = ['../authface_stage2_sdxl.py']

model = dict(facial_loss=None)
optim_wrapper = dict(facial_loss=None)
strategy = dict(shard_modules=['backbone.unet', 'backbone.controlnet'])
