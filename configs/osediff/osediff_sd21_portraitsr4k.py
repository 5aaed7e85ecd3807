# General OSEDiff (the authors' osediff.pkl) on PortraitSR-4K-Te: HeadsUp (arXiv 2510.09924) Table 2, row "OSEDiff"
# (General ISR). Test only:
#   python tools/test.py configs/osediff/osediff_sd21_portraitsr4k.py
# needs osediff.pkl (cswry/OSEDiff preset/models; `portraitisr download osediff_sd21`) and SD 2.1-base. For a
# checkpoint of your own: --cfg-options model.backbone.trained_weights=<osediff .pkl or exported .safetensors>.
# The model is the one the OSEDiff + OSEDiff_Face blending row uses for the whole photo
# (configs/blending/osediff_osediff_face.py): OSEDiff's test settings (test_osediff.py: bicubic x4, one step at
# t = 999, AdaIN colour fix, DAPE tags of the LQ as the prompt, which go in the dataset metainfo as `tags`).
_base_ = ['../_base_/default_runtime.py', '../_base_/models/sd21.py', '../_base_/datasets/portraitsr4k_test.py']

model = dict(
    type='OSEDiff',
    backbone=dict(_base_.sd21_backbone, trained_weights='osediff.pkl'),
    text_encoder={{_base_.sd21_text_encoder}},
    prompter=dict(type='TagPrompter', tagger={{_base_.dape_tagger}}),  # DAPE tags of the LQ (test_osediff.py)
    color_fix='adain',
    # Table 2 rows restore the same inputs: the LQ is made from the GT by HeadsUp's evaluation degradation
    # (`portrait_test_degradation` of _base_/datasets/portraitsr4k_test.py, OSEDiff's Real-ESRGAN pipeline without
    # USM, as configs/headsup/headsup_sd21.py), re-seeded per image from eval_seed and the sample index, then
    # enlarged x4 bicubically (as test_osediff.py does); scores compare against the dataset GT.
    # tests/test_configs/test_pisasr_configs.py checks that this LQ equals HeadsUp's and the blending baselines'.
    data_preprocessor=dict(type='SRDataPreprocessor', eval_degradation={{_base_.portrait_test_degradation}}),
)

test_sets = _base_.portrait_test_sets
test_cfg = dict(type='TestLoop')
val_cfg = dict(type='ValLoop')
