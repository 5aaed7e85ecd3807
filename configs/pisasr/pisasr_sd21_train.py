# PiSA-SR training (csslc/PiSA-SR train_pisasr.py with scripts/train/train_pisasr.sh; arXiv 2412.03017):
#   bash tools/dist_train.sh configs/pisasr/pisasr_sd21_train.py 4
# Two stages on one AdamW (no VSD regulariser: CSD uses the frozen UNet):
# the pixel LoRA alone with L2 for the first 4000 iterations (--pix_steps 4000), then the semantic LoRA alone with
# L2 1 + LPIPS-VGG 2 + CSD 1 (--lambda_l2 1 --lambda_lpips 2 --lambda_csd 1; CSD with the frozen SD 2.1 UNet, CFG
# 7.5, t ~ [20, 500) from --min_dm_step_ratio 0.02 --max_dm_step_ratio 0.5); the generator gets the empty prompt
# with probability 0.5 (--null_text_ratio 0.5). Batch 4 per GPU x 4 GPUs, 512 crops, Real-ESRGAN degradation with
# PiSA-SR's src/datasets/params.yml (the `seesr` preset, LQ resized back to 512). Seed 123 (default_runtime).
# Prompts: PiSA-SR tags the GT with RAM at every step (model.prompter.train_tagger of pisasr_sd21.py).
# Test the result with configs/pisasr/pisasr_sd21.py and
#   --cfg-options model.backbone.trained_weights=<exported .safetensors> (tools/export_weights.py).
_base_ = ['./pisasr_sd21.py', '../_base_/datasets/osediff_train.py']

# train_pisasr.sh / training_utils.py: --learning_rate 5e-5, --adam_beta1 0.9, --adam_beta2 0.999,
# --adam_weight_decay 1e-2, --adam_epsilon 1e-8, --max_grad_norm 1.0, --lr_scheduler constant
adamw = dict(type='AdamW', lr=5e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
optim_wrapper = dict(
    constructor='TrainableParamsOptimWrapperConstructor',
    backbone=dict(type='OptimWrapper', optimizer=adamw, clip_grad=dict(max_norm=1.0)))

model = dict(
    backbone=dict(trained_weights=None),  # from SD 2.1, not from pisa_sr.pkl
    lpips_loss=dict(type='LPIPSLoss', net='vgg', loss_weight=2.0),
    l2_weight=1.0,
    csd_weight=1.0,
    csd_cfg_scale=7.5,
    csd_timesteps=(20, 500),  # int(1000 * 0.02), int(1000 * 0.5)
    pix_steps=4000,
    null_text_ratio=0.5,
    # CSD's unconditional branch: --neg_prompt_csd's default (training_utils.py), "oil painting" twice as there
    negative_prompt=('painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, '
                     '3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, frames, '
                     'watermark, signature, jpeg artifacts, deformed, lowres, over-smooth'),
    # the PiSA-SR training degradation; this config's validation uses paired sets (no degradation at test time)
    data_preprocessor=dict(type='SRDataPreprocessor', degradation='seesr'),
)
# train_pisasr.py's --max_train_steps default (train_pisasr.sh does not set it); checkpoints every 500 iterations
train_cfg = dict(type='IterBasedTrainLoop', max_iters=100000, val_interval=500)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=500, by_epoch=False, max_keep_ckpts=3))

# validation on RealSR (paired, x4 bicubic input) as OSEDiff's training config; the full tables come from
# configs/pisasr/pisasr_sd21.py
val_dataloader = dict(
    _delete_=True,
    batch_size=1,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(type='PairedImageFolderDataset', lq_root='data/benchmark_realsr/test_LR',
                 gt_root='data/benchmark_realsr/test_HR', upscale=4))
val_evaluator = [dict(type='PSNR', prefix='RealSR')]
# the paired GISR sets only: the portrait set's LQ would come from this config's training degradation
test_sets = _base_.general_test_sets
test_dataloader = val_dataloader
test_evaluator = val_evaluator
