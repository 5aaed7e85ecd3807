# IDFSR section 5.4 (Fig. 8), case 4: the default model (masked LR + warped-reference style) "when the ID embedding is
# removed": the UNet keeps DiffAE's self-attention and no identity network is used.
_base_ = ['../idfsr_x16_celebref.py']

model = dict(
    unet=dict(attention='self'),
    identity_embedder=None,
)
