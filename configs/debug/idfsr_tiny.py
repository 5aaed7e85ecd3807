# IDFSR with a tiny DiffAE-shaped UNet, trained on 2 CPU cores in minutes on real photos that ship with
# scikit-image and matplotlib (`sample://portraits`: the astronaut and Grace Hopper, with their landmarks). Exercises
# the whole path of configs/idfsr/idfsr_x8_celebref.py: 64x64 FFHQ-aligned faces, a bicubic x8 LR of 8x8, the face
# masked, a reference warped onto it (piecewise affine with border anchors; each photo is its own reference, aligned
# with a random misalignment so that the warp has work to do), 6-channel UNet input, AdaGN on time and style, identity
# cross-attention, DDPM (T = 1000, linear) training and DDIM-20 validation. The identity network is dlib's ResNet
# (128-d, real weights from the face_recognition_models package): the only face recogniser that reaches this machine
# offline. The identity attention works on 64 channels (two per GroupNorm group; see IdentityCrossAttention).
_base_ = ['../_base_/default_runtime.py', '../_base_/schedules/idfsr_adam.py']

size, scale = 64, 8

model = dict(
    type='IDFSR',
    unet=dict(type='DiffAEUNet', image_size=size, in_channels=6, model_channels=32, channel_mult=(1, 2),
              num_res_blocks=1, attention_resolutions=(32, ), embed_channels=64, dropout=0.1, enc_in_channels=3,
              enc_channel_mult=(1, 1, 2), enc_num_res_blocks=1, enc_out_channels=64, attention='identity',
              id_channels=128),
    identity_embedder=dict(type='IdentityEmbedder', extractor=dict(type='DlibResNet')),
    warper=dict(type='ReferenceWarper', transform='piecewise_affine', anchors='border'),
    masker=dict(type='FaceRegionMasker'),
    test_identity='reference',
    data_preprocessor=dict(type='IDFSRDataPreprocessor'),
)

# a higher rate than the paper's 1e-4 so that a few hundred CPU steps get somewhere
optim_wrapper = dict(optimizer=dict(lr=5e-4))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=200, val_interval=100)

train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='IdentityFaceDataset', manifest='sample://portraits', size=size, scale=scale, flip=True,
                 ref_jitter=(10, 0.1, 0.05), repeat=4),
)
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    # a fixed seed: without one, building the sampler draws from numpy and shifts training draws
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(type='IdentityFaceDataset', manifest='sample://portraits', size=size, scale=scale,
                 ref_choice='next'),
)
val_evaluator = [dict(type='PSNR'), dict(type='SSIM')]
test_dataloader = val_dataloader
test_evaluator = val_evaluator

# stage 2 (tools/fit_identity.py): the paper's Adam at 1e-4 (section 3.3); more steps and a larger rate for a demo
identity_fitting = dict(steps=40, batch_size=2, lr=1e-2, checkpoint_interval=10, seed=0)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=100, by_epoch=False, max_keep_ckpts=1))
