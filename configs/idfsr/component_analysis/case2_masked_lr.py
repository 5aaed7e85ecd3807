# IDFSR section 5.4 (Fig. 8), case 2: case 1 with the facial region of the LR masked before the concatenation, which
# "effectively transform[s] the task into an inpainting problem"; no reference, style or identity embedding yet.
_base_ = ['../idfsr_x16_celebref.py']

model = dict(
    unet=dict(in_channels=6, attention='self', use_style=False),
    identity_embedder=None,
    lr_condition='masked',
    style_source='none',
)
