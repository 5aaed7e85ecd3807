# HeadsUp with tiny random SD-shaped components: trains on 2 CPU cores in minutes on real photos
# that ship with scikit-image and matplotlib (`sample://portraits`: astronaut and Grace Hopper with
# a reference face each, the cameraman without one). Exercises the whole path of headsup_sd21.py:
# 9-channel conv_in with reference latent and face mask, reference dropout, face fidelity +
# identity + adversarial losses on faces aligned from the GT landmarks, three optimisers
# (generator, VSD regulariser, face discriminator), trainable-only checkpoints and exact resume.
# The identity network has random weights here (no differentiable face recogniser reaches this
# machine offline): it tests the path, not identity preservation.
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/tiny_sd.py',
    '../_base_/schedules/osediff_adamw.py'
]

crop_size = 128
face_size = 64  # side of the aligned face crops the face losses see (512 in the paper config)

model = dict(
    type='HeadsUp',
    backbone={{_base_.tiny_headsup_backbone}},
    regularizer={{_base_.tiny_regularizer}},
    text_encoder={{_base_.tiny_text_encoder}},
    prompter=dict(type='FixedPrompter', prompt='a high-quality portrait photo'),
    lpips_loss=dict(type='LPIPSLoss', net='vgg', loss_weight=2.0),
    face_aligner=dict(type='FaceAligner', template='ffhq512', output_size=face_size),
    face_fidelity_loss=dict(type='FaceFidelityLoss', lpips_weight=0.8, loss_weight=1.0),
    identity_loss=dict(type='IdentityLoss', extractor=dict(type='ArcFaceIResNet', depth=18),
                       loss_weight=4.0),
    identity_aligner=dict(type='FaceAligner', template='arcface112'),
    discriminator=dict(type='FacePatchDiscriminator', base_channels=16, num_layers=2),
    adversarial_loss=dict(type='GANLoss', gan_type='softplus', loss_weight=0.1),
    ref_dropout=0.2,
    ref_placement='resize',
    color_fix='adain',
    # as headsup_sd21.py: OSEDiff's Real-ESRGAN pipeline (no USM) in training, the native-size LQ upscaled
    # bicubically in evaluation, scored against the dataset GT
    data_preprocessor=dict(type='PortraitDataPreprocessor', degradation='osediff',
                           eval_degradation=dict(preset='osediff', resize_back=False)),
)

optim_wrapper = dict(
    backbone=dict(optimizer=dict(lr=1e-4)),
    regularizer=dict(optimizer=dict(lr=1e-4)),
    discriminator=dict(type='OptimWrapper', optimizer={{_base_.adamw}}, clip_grad=dict(max_norm=1.0)),
)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40, val_interval=20)

train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    collate_fn=dict(type='portrait_collate'),
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='PortraitTripletDataset', manifest='sample://portraits', crop_size=crop_size,
                 flip=True, ref_size=face_size, unit='face', repeat=4),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    collate_fn=dict(type='portrait_collate'),
    # a fixed seed: without one, building the sampler draws from numpy and shifts training crops
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(type='PortraitTripletDataset', manifest='sample://portraits', crop_size=crop_size,
                 crop_mode='center', ref_size=face_size, unit='face'),
)
val_evaluator = [dict(type='PSNR')]
test_dataloader = val_dataloader
test_evaluator = val_evaluator

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=5),
    checkpoint=dict(type='CheckpointHook', interval=20, by_epoch=False, max_keep_ckpts=2))
