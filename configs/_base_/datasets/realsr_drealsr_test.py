# OSEDiff's test sets (preset/datasets/benchmark_*): 128x128 LQ, 512x512 GT, LQ upscaled x4 with
# PIL bicubic as test_osediff.py does.
realsr_root = 'data/benchmark_realsr'
drealsr_root = 'data/benchmark_drealsr'
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='PairedImageFolderDataset', lq_root=realsr_root + '/test_LR',
                 gt_root=realsr_root + '/test_HR', upscale=4),
)
test_evaluator = [dict(type='PSNR', prefix='RealSR')]
