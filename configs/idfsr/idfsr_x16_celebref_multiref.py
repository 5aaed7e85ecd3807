# IDFSR section 5.3, "The impact of reference image quantity": identities of the CelebRef-HQ test set with more than
# 10 images (10 of them), the embedding fitted on 2, 3, ..., 10 of their images, the other images restored and
# scored (pixel, identity and attribute consistency; Fig. 7). For every count N:
#     python tools/fit_identity.py --per-identity data/CelebRef-HQ/multiref --split finetune --num-photos N --aligned \
#         --config configs/idfsr/idfsr_x16_celebref_multiref.py --checkpoint CKPT -o work_dirs/multiref/refs_N
#     python tools/test.py configs/idfsr/idfsr_x16_celebref_multiref.py CKPT \
#         --cfg-options model.identity_dir=work_dirs/multiref/refs_N
# Which scale Fig. 7 uses is not stated: x16 (the paper's headline setting) is our choice.
_base_ = ['./idfsr_x16_celebref_ft.py']

multiref_root = 'data/CelebRef-HQ/multiref'  # the 10 identities with > 10 images, one folder each
multi_reference = dict(counts=(2, 3, 4, 5, 6, 7, 8, 9, 10), min_images=11, num_identities=10)
model = dict(identity_dir='work_dirs/multiref/refs_10')
test_dataloader = dict(
    batch_size=8,
    num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    # the fitting photos are the first half of each identity (--split finetune); the rest are restored
    dataset=dict(_base_.celebref_test, data_root=multiref_root, identities=None, scale=16),
)
test_evaluator = [dict(type=metric, prefix='MultiRef') for metric in ('PSNR', 'SSIM', 'LPIPS', 'IDS')]
test_sets = [dict(name='CelebRef-HQ multi-reference x16', table='face_ref', dataloader=test_dataloader,
                  evaluator=test_evaluator)]
