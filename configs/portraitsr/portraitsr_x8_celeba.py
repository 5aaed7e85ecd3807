# PortraitSR (AAAI 2026) x8 face super-resolution: CelebA 128x128 aligned faces, bicubic 16x16 LR, evaluated on
# CelebA (1,000 faces) and Helen (50 faces) at 128x128 ("Datasets"). Parsing maps (L_pm, Eq. 12) are read from
# data/celeba/parsing_128 (<image stem>.png class indices, 19 CelebAMask-HQ labels). Without such files, set
# parsing_root=None and parser=dict(type='FacexlibFaceParser') in train_dataloader.dataset (facexlib's BiSeNet,
# weights via the resolver), or neither: training then runs without L_pm (see AlignedFaceDataset).
# Data layout: data/celeba/train_128 (168,854 faces), data/celeba/test_128, data/helen/test_128.
_base_ = ['../_base_/default_runtime.py', '../_base_/models/portraitsr.py', '../_base_/schedules/portraitsr_adam.py']

scale, size = 8, 128

model = dict(
    type='PortraitSR',
    generator={{_base_.portraitsr_generator}},
    perceptual_loss=dict(type='VGGPerceptualLoss', loss_weight=0.1),
    pixel_weight=1.0, parsing_weight=0.005, reconstruction_weight=0.5, dictionary_weight=0.001,
    data_preprocessor=dict(type='PortraitSRDataPreprocessor'),
)

# The paper gives no batch size: 16 faces of 128x128 per GPU is our choice.
train_dataloader = dict(
    batch_size=16,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='AlignedFaceDataset', data_root='data/celeba/train_128', size=size, scale=scale, flip=True,
                 parsing_root='data/celeba/parsing_128'),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(type='AlignedFaceDataset', data_root='data/celeba/test_128', size=size, scale=scale),
)
# Table 1 reports PSNR/SSIM/LPIPS; Table 5 (x8 only) adds VIF: the pixel-domain VIFp on Y (our reading, see
# docs/evaluation.md "VIF"), as every x8 ablation under ablations/ inherits.
x8_metrics = ('PSNR', 'SSIM', 'LPIPS', 'VIF')
val_evaluator = [dict(type=metric, prefix='CelebA') for metric in x8_metrics]
test_dataloader = val_dataloader
test_evaluator = val_evaluator
# tools/test.py: CelebA (1,000 faces) and Helen (50 faces), PSNR/SSIM/LPIPS as in Table 1 and VIF as in Table 5.
test_sets = [
    dict(name=name, table='face_sr',
         dataloader=dict(batch_size=8, num_workers=2, sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
                         dataset=dict(type='AlignedFaceDataset', data_root=root, size=size, scale=scale)),
         evaluator=[dict(type=metric, prefix=name) for metric in x8_metrics])
    for name, root in (('CelebA', 'data/celeba/test_128'), ('Helen', 'data/helen/test_128'))
]
