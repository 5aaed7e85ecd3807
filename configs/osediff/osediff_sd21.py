# OSEDiff (Wu et al., 2024) for general real-world ISR, with the paper's settings:
# SD 2.1-base, LoRA rank 4 on the VAE encoder and the UNet, MSE 1 + LPIPS-VGG 2 + VSD 1, CFG 7.5,
# AdamW 5e-5, batch 4 x 4 GPUs, 512 crops, Real-ESRGAN degradation with OSEDiff's parameters.
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/sd21.py',
    '../_base_/schedules/osediff_adamw.py', '../_base_/datasets/osediff_train.py',
    '../_base_/datasets/realsr_drealsr_test.py', '../_base_/datasets/general_isr_test.py'
]
test_sets = _base_.general_test_sets  # Table 3 (paper 000): DIV2K-val, RealSR, DRealSR

model = dict(
    type='OSEDiff',
    backbone={{_base_.sd21_backbone}},
    regularizer={{_base_.sd21_regularizer}},
    text_encoder={{_base_.sd21_text_encoder}},
    # OSEDiff prompts with RAM tags of the GT in training and DAPE tags of the LQ at test time;
    # tags computed offline go in the dataset metainfo (`tags`).
    prompter=dict(type='TagPrompter', missing='empty'),
    lpips_loss=dict(type='LPIPSLoss', net='vgg', loss_weight=2.0),
    l2_weight=1.0,
    vsd_weight=1.0,
    regularizer_weight=1.0,
    color_fix='adain',
    data_preprocessor=dict(
        type='SRDataPreprocessor', degradation='osediff'),
)
