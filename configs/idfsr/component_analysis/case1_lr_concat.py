# IDFSR section 5.4 (Fig. 8), case 1: the plain diffusion SR baseline that concatenates the (unmasked) LR with the
# noise at every step (SR3 / SRDiff), without reference, style or identity embedding. Our reading of the text:
# "starting from an unconditional diffusion model, we progressively introduce key components". The scale of Fig. 8
# is not stated: x16 (the headline setting) is our choice.
_base_ = ['../idfsr_x16_celebref.py']

model = dict(
    unet=dict(in_channels=6, attention='self', use_style=False),
    identity_embedder=None,
    lr_condition='full',
    style_source='none',
)
