# PiSA-SR (Sun et al., "Pixel-level and Semantic-level Adjustable Super-resolution: A Dual-LoRA Approach",
# CVPR 2025, arXiv 2412.03017), a General-ISR baseline of HeadsUp (arXiv 2510.09924): Table 2 (PortraitSR-4K-Te, row
# PiSA-SR) and Table 3 (DIV2K / RealSR / DRealSR, rows PiSA-SR-S1). Test only, with the authors' release:
#   python tools/test.py configs/pisasr/pisasr_sd21.py
# needs pisa_sr.pkl (csslc/PiSA-SR README: Google Drive / Baidu, no direct URL) in $PORTRAITISR_HOME and SD 2.1-base.
# Training: configs/pisasr/pisasr_sd21_train.py. Settings of csslc/PiSA-SR test_pisasr.py / scripts/test/*.sh:
# SD 2.1-base, pixel and semantic UNet LoRA of rank 4 (peft's default alpha 8), frozen VAE, one step at t = 1
# (z_H = z_L - eps), lambda_pix = lambda_sem = 1.0 (the default setting: one UNet pass), the empty prompt, AdaIN
# colour fix against the upscaled LQ.
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/sd21.py', '../_base_/datasets/portraitsr4k_test.py',
    '../_base_/datasets/general_isr_test.py'
]

pisasr_backbone = dict(
    type='PiSASD',
    pretrained=_base_.sd21_pretrained,
    timestep=1,  # --timesteps1 1
    lora_rank_pix=4,  # --lora_rank_unet_pix 4
    lora_rank_sem=4,  # --lora_rank_unet_sem 4
    lora_alpha=8,  # not set by PiSA-SR: peft's default (scaling 2)
    lambda_pix=1.0,  # --lambda_pix 1.0
    lambda_sem=1.0,  # --lambda_sem 1.0
    frozen_dtype='bfloat16',  # PiSA-SR tests in fp16 (--mixed_precision fp16); bf16 is our choice, as for OSEDiff
    gradient_checkpointing=True,
)
model = dict(
    type='PiSASR',
    backbone=dict(pisasr_backbone, trained_weights='pisa_sr.pkl'),
    text_encoder={{_base_.sd21_text_encoder}},
    # test_pisasr.py restores with the empty prompt ('you can add the text prompt here'); training prompts are RAM
    # tags of the GT as f'{tags}, {pos_prompt_csd}' with pos_prompt_csd = '' (train_pisasr.py).
    # The empty test prompt is PiSA-SR's own choice, so it does not warn (trained_with_prompts=False).
    prompter=dict(type='TagPrompter', train_tagger={{_base_.ram_tagger}}, template='{prompt}',
                  train_template='{tags}, {prompt}', prompt='', missing='empty', trained_with_prompts=False),
    color_fix='adain',  # --align_method adain
    # Table 2 rows restore the same inputs: the LQ is made from the GT by HeadsUp's evaluation degradation
    # (`portrait_test_degradation` of _base_/datasets/portraitsr4k_test.py, OSEDiff's Real-ESRGAN pipeline without
    # USM, as configs/headsup/headsup_sd21.py), re-seeded per image from eval_seed and the sample index, then
    # enlarged x4 bicubically (PiSA-SR enlarges with PIL's bicubic); scores compare against the dataset GT.
    # tests/test_configs/test_pisasr_configs.py checks that this LQ equals HeadsUp's and the blending baselines'. The
    # GISR sets are paired (no degradation).
    data_preprocessor=dict(type='SRDataPreprocessor', eval_degradation={{_base_.portrait_test_degradation}}),
)

# Table 2 (PortraitSR-4K-Te, 256 -> 1024) and Table 3 (128 -> 512, the LQ enlarged x4 with PIL bicubic as
# test_pisasr.py does; neither triggers its enlargement of inputs below 128 pixels)
test_sets = _base_.portrait_test_sets + _base_.general_test_sets
test_cfg = dict(type='TestLoop')
val_cfg = dict(type='ValLoop')
