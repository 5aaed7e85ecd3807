# configs/debug/headsup_tiny.py with AuthFace's latent facial loss as an extra loss (constant weight: the
# one-step model's timestep is fixed) and its two component discriminators with their own optimiser.
_base_ = ['./headsup_tiny.py', '../_base_/datasets/authface_train.py']

model = dict(
    facial_loss=dict(type='TimeAwareFacialLoss',
                     discriminator=dict(type='FacialComponentDiscriminator', in_channels=4, base_channels=16),
                     time_weighting='constant'))
optim_wrapper = dict(facial_loss=dict(type='OptimWrapper', optimizer={{_base_.facial_discriminator_adam}}))
