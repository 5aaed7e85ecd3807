# Blending baseline of HeadsUp (Tables 1-3): Real-ESRGAN x4plus for the whole photo, CodeFormer on every face,
# pasted back with facexlib's soft square mask (CodeFormer's inference_codeformer.py flow).
# - CodeFormer fidelity weight w = 0.5: the official script's default; the HeadsUp paper does not state the w
#   it used (unverified).
# - RetinaFace ResNet-50 as CodeFormer's default detector (its facelib threshold 0.8; facexlib's is 0.97),
#   detecting on the LQ and cropping from it, as facexlib does; eye distance >= 5 LQ pixels (x4 in output pixels).
_base_ = [
    '../_base_/default_runtime.py', '../_base_/datasets/portraitsr4k_test.py',
    '../_base_/datasets/general_isr_test.py'
]

model = dict(
    type='BlendingRestorer',
    general_restorer=dict(type='RealESRGANRestorer', scale=4, tile=512, tile_overlap=32),
    face_restorer=dict(type='CodeFormerRestorer', fidelity_weight=0.5),
    face_detector=dict(type='RetinaFaceDetector', network='resnet50', conf_threshold=0.8),
    face_aligner=dict(type='FaceAligner', template='ffhq512', output_size=512),
    upscale=4,
    detect_on='input',
    crop_from='input',
    min_eye_distance=20,
    # PortraitSR-4K-Te's 256 LQ, the very one HeadsUp restores (same pipeline, same per-image seeds); the
    # evaluation GT is the dataset's (the preprocessor keeps only the degradation's LQ)
    data_preprocessor=dict(type='BlendingDataPreprocessor', scale=4,
                           degradation={{_base_.portrait_test_degradation}}),
)

# Table 2 (PortraitSR-4K-Te: the LQ is made from the GT by `portrait_test_degradation` with the same per-image
# seeds as HeadsUp's evaluation, so both methods restore the same inputs) and Table 3 (native 128x128 LQ, the
# general model upscales)
test_sets = _base_.portrait_test_sets + _base_.general_test_sets_native_lq
test_cfg = dict(type='TestLoop')
val_cfg = dict(type='ValLoop')
