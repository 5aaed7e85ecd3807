# OSEDiff's test sets (preset/datasets/benchmark_*): 128x128 LQ, 512x512 GT; the LQ is upscaled
# x4 with PIL bicubic as test_osediff.py does. RealSR here; for DRealSR set the two roots to
# data/benchmark_drealsr/test_LR and test_HR (--cfg-options test_dataloader.dataset.lq_root=...).
realsr_root = 'data/benchmark_realsr'
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    # a fixed seed: without one, building the sampler draws from numpy and shifts training crops
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(type='PairedImageFolderDataset', lq_root=realsr_root + '/test_LR',
                 gt_root=realsr_root + '/test_HR', upscale=4),
)
test_evaluator = [dict(type='PSNR', prefix='RealSR')]
val_dataloader = test_dataloader
val_evaluator = test_evaluator
