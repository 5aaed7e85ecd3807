# HeadsUp (configs/headsup/headsup_sd21.py) with AuthFace's latent facial loss as an extra generator loss
# (AuthFace, arXiv 2410.09864, section 3.2): eye and mouth crops of HeadsUp's one-step output latent z_H, judged by two
# component discriminators that train with their own optimiser (optim_wrapper['facial_loss']).
# A one-step model predicts at its fixed timestep (999), where Eq. 3's logit-normal weight is ~2e-10, so the
# constant weight applies here (the model refuses the logit-normal one). lambda_d, lambda_s: GFP-GAN's 1, 200;
# how this term should be balanced against HeadsUp's own losses is untested (our choice).
_base_ = ['../headsup/headsup_sd21.py', '../_base_/datasets/authface_train.py']

model = dict(
    facial_loss=dict(
        type='TimeAwareFacialLoss',
        discriminator=dict(type='FacialComponentDiscriminator', in_channels=4, base_channels=64),
        time_weighting='constant',
        adversarial_weight=1.0,
        style_weight=200.0))
optim_wrapper = dict(facial_loss=dict(type='OptimWrapper', optimizer={{_base_.facial_discriminator_adam}}))
