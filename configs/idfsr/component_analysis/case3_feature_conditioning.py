# IDFSR section 5.4 (Fig. 8), case 3: feature-based conditioning "such as DiffAE and Stable Diffusion" instead of the
# pixel concatenation: the LR enters only through DiffAE's semantic encoder (AdaGN), the UNet sees the noise alone
# (3 input channels). No reference or identity embedding (our reading of the progression).
_base_ = ['../idfsr_x16_celebref.py']

model = dict(
    unet=dict(in_channels=3, attention='self', use_style=True),
    identity_embedder=None,
    lr_condition='none',
    style_source='lr',
)
