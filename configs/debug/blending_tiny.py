# The blending machinery without networks: bicubic x4 as the "general SR", an identity face restorer and dlib's
# HOG detector (real weights from PyPI), on real photos that ship with scikit-image / matplotlib. The LQ is the
# photo downscaled x4 (antialiased bicubic), so the output should reproduce the bicubic result everywhere.
# python tools/test.py configs/debug/blending_tiny.py (the model has no trained weights: no checkpoint needed).
_base_ = ['../_base_/default_runtime.py']

model = dict(
    type='BlendingRestorer',
    general_restorer=dict(type='BicubicRestorer', scale=4),
    face_restorer=dict(type='IdentityFaceRestorer', face_size=512),
    face_detector=dict(type='DlibFaceDetector', model='hog'),
    upscale=4,
    detect_on='upscaled',
    min_eye_distance=8,
    data_preprocessor=dict(type='BlendingDataPreprocessor', scale=4),
)

test_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(type='ImageFolderDataset', images=['sample://astronaut', 'sample://grace_hopper'],
                 crop_size=384, crop_mode='center'),
)
# the seam score reads the paste mask the model puts in the metainfo; the table is Table 2's layout
test_evaluator = [dict(type='PSNR'), dict(type='SSIM'), dict(type='SeamScore')]
test_table = 'portrait'
test_cfg = dict(type='TestLoop')
val_dataloader = test_dataloader
val_evaluator = test_evaluator
val_cfg = dict(type='ValLoop')
