# OSEDiff (configs/osediff/osediff_sd21.py) with AuthFace's latent facial loss as an extra generator loss
# (AuthFace, arXiv 2410.09864, section 3.2), constant weight (a one-step model has one timestep, 999, where Eq. 3's
# weight vanishes). The loss needs GT landmarks: PortraitDataPreprocessor supplies them (images without a face add
# nothing), and this config trains on FFHQ resized to 512, whose landmarks are the FFHQ template's (a face
# model, as OSEDiff_Face). Mixing in faceless data works too (MixedDataset with portrait_collate).
_base_ = ['../osediff/osediff_sd21.py', '../_base_/datasets/authface_train.py']

model = dict(
    facial_loss=dict(
        type='TimeAwareFacialLoss',
        discriminator=dict(type='FacialComponentDiscriminator', in_channels=4, base_channels=64),
        time_weighting='constant',
        adversarial_weight=1.0,
        style_weight=200.0),
    data_preprocessor=dict(type='PortraitDataPreprocessor', degradation='osediff'))
optim_wrapper = dict(facial_loss=dict(type='OptimWrapper', optimizer={{_base_.facial_discriminator_adam}}))
train_dataloader = dict(collate_fn=dict(type='portrait_collate'), dataset=dict(_base_.ffhq_512_train, _delete_=True))
