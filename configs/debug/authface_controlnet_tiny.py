# AuthFace stage II (arXiv 2410.09864, section 3.2) with tiny random SDXL-shaped components: a ControlNet
# built from the frozen UNet's encoder reads the degraded image, the null prompt conditions the UNet,
# and the time-aware latent facial loss (Eq. 2-4) judges eye and mouth crops of the predicted latent
# with two discriminators (their own optimiser) - on the package's real photos with GT landmarks
# (`sample://portraits`), degraded on the fly with GFP-GAN's settings. Trains, validates (a 4-step
# DDIM restoration) and resumes exactly on 2 CPU cores.
_base_ = ['../_base_/default_runtime.py', '../_base_/models/tiny_sdxl.py', '../_base_/datasets/authface_train.py']

crop_size = 128
model = dict(
    type='AuthFace',
    backbone={{_base_.tiny_sdxl_controlnet_backbone}},
    text_encoder={{_base_.tiny_sdxl_text_encoder}},
    prompter=dict(type='NullPrompter'),
    facial_loss=dict(type='TimeAwareFacialLoss', discriminator={{_base_.tiny_facial_discriminator}},
                     time_weighting='logit_normal', location=0.0, scale=1.0),
    inference_scheduler=dict(type='DDIMScheduler'),
    num_inference_steps=4,
    data_preprocessor=dict(type='PortraitDataPreprocessor', degradation={{_base_.gfpgan_degradation}}),
)

adamw = dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
optim_wrapper = dict(
    constructor='TrainableParamsOptimWrapperConstructor',
    backbone=dict(type='OptimWrapper', optimizer=adamw, clip_grad=dict(max_norm=1.0)),
    facial_loss=dict(type='OptimWrapper', optimizer={{_base_.facial_discriminator_adam}}))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=8, val_interval=4)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    collate_fn=dict(type='portrait_collate'),
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='PortraitTripletDataset', manifest='sample://portraits', crop_size=crop_size, flip=True,
                 unit='face', repeat=4),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    collate_fn=dict(type='portrait_collate'),
    # a fixed seed: without one, building the sampler draws from numpy and shifts training crops
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(type='PortraitTripletDataset', manifest='sample://portraits', crop_size=crop_size,
                 crop_mode='center', unit='face'),
)
val_evaluator = [dict(type='PSNR')]
test_dataloader = val_dataloader
test_evaluator = val_evaluator

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=2),
    checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False, max_keep_ckpts=2))
