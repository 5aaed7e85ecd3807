# PortraitSR (AAAI 2026) x4 face super-resolution: the x8 setup (portraitsr_x8_celeba.py) with a bicubic 32x32 LR
# of the same CelebA 128x128 aligned faces; evaluated on CelebA (1,000 faces) and Helen (50 faces) at 128x128.
_base_ = ['./portraitsr_x8_celeba.py']

scale, size = 4, 128

train_dataloader = dict(dataset=dict(scale=scale))
val_dataloader = dict(dataset=dict(scale=scale))
test_dataloader = dict(dataset=dict(scale=scale))
# Table 1's columns: the paper reports VIF (Table 5) at x8 only
val_evaluator = [dict(type=metric, prefix='CelebA') for metric in ('PSNR', 'SSIM', 'LPIPS')]
test_evaluator = val_evaluator
# a list is replaced, not merged: the x8 test sets with the x4 LR
test_sets = [
    dict(name=name, table='face_sr',
         dataloader=dict(batch_size=8, num_workers=2, sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
                         dataset=dict(type='AlignedFaceDataset', data_root=root, size=size, scale=scale)),
         evaluator=[dict(type=metric, prefix=name) for metric in ('PSNR', 'SSIM', 'LPIPS')])
    for name, root in (('CelebA', 'data/celeba/test_128'), ('Helen', 'data/helen/test_128'))
]
