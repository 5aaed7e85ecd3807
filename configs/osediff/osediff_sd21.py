# OSEDiff (Wu et al., 2024) for general real-world ISR, with the paper's settings:
# SD 2.1-base, LoRA rank 4 on the VAE encoder and the UNet, MSE 1 + LPIPS-VGG 2 + VSD 1, CFG 7.5,
# AdamW 5e-5, batch 4 x 4 GPUs, 512 crops, Real-ESRGAN degradation with OSEDiff's parameters.
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/sd21.py',
    '../_base_/schedules/osediff_adamw.py', '../_base_/datasets/osediff_train.py',
    '../_base_/datasets/realsr_drealsr_test.py', '../_base_/datasets/general_isr_test.py'
]
test_sets = _base_.general_test_sets  # Table 3 (HeadsUp, arXiv 2510.09924): DIV2K-val, RealSR, DRealSR

model = dict(
    type='OSEDiff',
    backbone={{_base_.sd21_backbone}},
    regularizer={{_base_.sd21_regularizer}},
    text_encoder={{_base_.sd21_text_encoder}},
    # OSEDiff prompts with RAM tags of the GT in training and DAPE tags of the LQ at test time (train_osediff.py /
    # test_osediff.py): the caption is the tags in training, f'{tags}, {prompt},' with an empty prompt at test.
    prompter=dict(type='TagPrompter', tagger={{_base_.dape_tagger}}, train_tagger={{_base_.ram_tagger}},
                  use_gt_in_training=True),
    # VSD's unconditional branch: the README training command's string (and scripts/train/train_osediff.sh's)
    negative_prompt=('painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, '
                     'unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, '
                     'signature, jpeg artifacts, deformed, lowres, over-smooth'),
    lpips_loss=dict(type='LPIPSLoss', net='vgg', loss_weight=2.0),
    l2_weight=1.0,
    vsd_weight=1.0,
    regularizer_weight=1.0,
    color_fix='adain',
    # Real-ESRGAN's pipeline as OSEDiff runs it: no USM (dataloaders/realesrgan.py comments the GT sharpening
    # out), so the training target is the GT itself; x4 with the LQ resized back to the crop size.
    data_preprocessor=dict(
        type='SRDataPreprocessor', degradation='osediff'),
)
