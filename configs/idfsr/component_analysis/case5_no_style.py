# IDFSR section 5.4 (Fig. 8), case 5: the default model with the style embedding removed: no semantic encoder, no
# AdaGN style modulation, no reference; masked LR and the identity embedding remain.
_base_ = ['../idfsr_x16_celebref.py']

model = dict(
    unet=dict(use_style=False),
    style_source='none',
)
