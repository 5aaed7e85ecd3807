# Blending baseline of HeadsUp (Tables 1-3): OSEDiff x4 for the whole photo, OSEDiff_Face on every aligned
# 512 x 512 face, pasted back with facexlib's soft square mask. OSEDiff_Face's README runs it on pre-aligned
# faces (--upscale 1); the crop / paste here is facexlib's (how HeadsUp cropped is unverified). The faces are
# cut from the OSEDiff output (already 4x), so OSEDiff_Face sees 512 crops at output resolution.
# Weights: osediff.pkl and osediff_face.pkl (cswry/OSEDiff preset/models) in $PORTRAITISR_HOME, plus SD 2.1-base.
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/sd21.py', '../_base_/datasets/portraitsr4k_test.py',
    '../_base_/datasets/general_isr_test.py'
]

osediff_model = dict(
    type='OSEDiff',
    backbone={{_base_.sd21_backbone}},
    text_encoder={{_base_.sd21_text_encoder}},
    # OSEDiff tags the LQ with DAPE at test time (test_osediff.py)
    prompter=dict(type='TagPrompter', tagger={{_base_.dape_tagger}}),
    color_fix='adain',
)
model = dict(
    type='BlendingRestorer',
    general_restorer=dict(type='OSEDiffRestorer', model=osediff_model, checkpoint='osediff.pkl', scale=4),
    # OSEDiff_Face tests without a colour fix (test_osediff.py on faces, configs/osediff/osediff_face_sd21.py)
    face_restorer=dict(type='OSEDiffRestorer', model=dict(osediff_model, color_fix=None),
                       checkpoint='osediff_face.pkl', scale=1, face_size=512),
    face_detector=dict(type='RetinaFaceDetector', network='resnet50', conf_threshold=0.97),
    face_aligner=dict(type='FaceAligner', template='ffhq512', output_size=512),
    upscale=4,
    detect_on='upscaled',
    crop_from='upscaled',
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
