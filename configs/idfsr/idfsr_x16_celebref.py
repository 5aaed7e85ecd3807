# IDFSR pretraining at x16 on CelebRef-HQ and the Table 1 (x16) test rows, plus Table 2's face-verification accuracy
# (IDV, section 4.4: "under a 16x scale setting"). Everything else as idfsr_x8_celebref.py.
#     bash tools/dist_train.sh configs/idfsr/idfsr_x16_celebref.py 4
_base_ = ['./idfsr_x8_celebref.py']

scale = 16

train_dataloader = dict(dataset=dict(scale=scale))
val_dataloader = dict(
    batch_size=8,
    num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(_base_.celebref_test, scale=scale),
)
test_dataloader = val_dataloader
# Table 1 (x16) columns and Table 2's IDV; IDV uses the extractor's own verification threshold
table1_metrics = ('PSNR', 'SSIM', 'LPIPS', 'FID', 'CLIPIQA', 'MUSIQ', 'IDS', 'FaceVerificationAccuracy')
test_evaluator = [dict(type=metric, prefix='CelebRef-HQ') for metric in table1_metrics]
test_sets = [
    dict(name=f'CelebRef-HQ x{scale} (PT)', table='face_ref', dataloader=test_dataloader,
         evaluator=[dict(type=metric, prefix='CelebRef-HQ') for metric in table1_metrics]),
]
