# AuthFace stage I: face-oriented fine-tuning of SDXL ("AuthFace: Towards Authentic Blind Face Restoration with
# Face-Oriented Generative Diffusion Prior", arXiv 2410.09864, sections 3.1 and 4.1).
# The entire SDXL UNet is fine-tuned with its original objective (the DDPM noise loss) on 1.5K curated,
# FFHQ-aligned HQ portraits with photography-guided captions, at a fixed 1024 x 1024 resolution; AdamW,
# learning rate 5e-7, batch 96, 50k iterations, four GPUs (NVIDIA L40s). The VAE and both text encoders
# stay frozen. Put the images in data/authface_portraits with one caption file per image (0001.png +
# 0001.txt); AuthFace's LLaVA-1.6 captioner is not part of this library.
# The full UNet with AdamW does not fit one GPU: it trains sharded (FSDP2) through FlexibleRunner:
#   bash tools/dist_train.sh configs/authface/authface_stage1_sdxl.py 4
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=... bash tools/dist_train.sh configs/authface/authface_stage1_sdxl.py 4
_base_ = ['../_base_/default_runtime.py', '../_base_/models/sdxl.py']

num_gpus = 4  # section 4.1
image_size = 1024  # section 4.1 ("1024 x 1024 for fintuing model"), section 3.1 (fixed resolution)
total_batch_size = 96  # section 4.1
# Our split of the batch (the paper gives only the total): 4 images per GPU x 4 GPUs x 6 accumulated steps.
batch_size_per_gpu = 4
accumulative_counts = 6
updates = 50000  # section 4.1: "the training iteration [is] set to ... 50k" (optimiser updates of batch 96)

model = dict(
    type='AuthFaceFineTune',
    backbone=dict(
        type='LatentDiffusion',
        pretrained={{_base_.sdxl_pretrained}},
        train_unet=True,  # section 4.1: "we fine-tune the entire U-Net"
        frozen_dtype='bfloat16',  # the frozen VAE (the UNet keeps float32 master weights)
        gradient_checkpointing=True),
    text_encoder={{_base_.sdxl_text_encoder}},
    # the captions of the dataset (metainfo['caption']) are the prompts
    prompter=dict(type='TagPrompter', tags_key='caption', template='{tags}', train_template='{tags}'),
    # text-to-image previews (val/test): SDXL's released scheduler and diffusers' SDXL defaults (our choice)
    inference_scheduler=dict(type='EulerDiscreteScheduler'),
    num_inference_steps=50,
    guidance_scale=5.0,
)

runner_type = 'PortraitFlexibleRunner'
strategy = dict(
    type='FSDP2Strategy',
    shard_modules=['backbone.unet'],
    block_classes={{_base_.sdxl_block_classes}},
    mixed_precision={{_base_.sdxl_mixed_precision}})

# AdamW with lr 5e-7 (section 4.1); betas, weight decay, eps and the gradient clipping are diffusers'
# train_text_to_image_sdxl.py defaults (the paper does not state them).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-7, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8),
    clip_grad=dict(max_norm=1.0),
    accumulative_counts=accumulative_counts)
# mmengine counts micro-batches: 50k updates x 6 accumulated steps
train_cfg = dict(type='IterBasedTrainLoop', max_iters=updates * accumulative_counts)

train_dataloader = dict(
    batch_size=batch_size_per_gpu,
    num_workers=8,
    persistent_workers=True,
    collate_fn=dict(type='portrait_collate'),
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='CaptionedImageDataset', data_root='data/authface_portraits', resize=image_size, flip=True),
)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=60),
    checkpoint=dict(type='CheckpointHook', interval=5000 * accumulative_counts, by_epoch=False, max_keep_ckpts=3))
