# AuthFace stage I (arXiv 2410.09864, section 3.1) with tiny random SDXL-shaped components: the whole UNet
# trains on captioned real photos that ship with scikit-image and matplotlib (our own tag-style
# captions; AuthFace's LLaVA captioner is not available offline). Exercises the path of
# configs/authface/authface_stage1_sdxl.py: two text encoders (penultimate states + pooled), SDXL's
# added time ids, the DDPM noise loss, whole-UNet checkpoints and exact resume, on 2 CPU cores.
# configs/debug/authface_finetune_tiny_fsdp.py runs the same under the sharded FSDP2 strategy.
_base_ = ['../_base_/default_runtime.py', '../_base_/models/tiny_sdxl.py']

image_size = 64  # every photo resized to a fixed square, as the paper's fixed 1024 x 1024
captions = {
    'astronaut': 'woman, close-up portrait, smiling, short dark hair, white spacesuit, american flag, '
                 'studio lighting, sharp focus, high resolution',
    'grace_hopper': 'elderly woman, portrait, navy uniform, short grey hair, serious expression, '
                    'soft lighting, dark background, sharp focus',
    'camera': 'man, black and white photograph, cameraman, tripod, dark coat, outdoor, side view',
}
model = dict(
    type='AuthFaceFineTune',
    backbone={{_base_.tiny_sdxl_finetune_backbone}},
    text_encoder={{_base_.tiny_sdxl_text_encoder}},
    prompter=dict(type='TagPrompter', tags_key='caption', template='{tags}', train_template='{tags}'),
    inference_scheduler=dict(type='DDIMScheduler'),
    num_inference_steps=4,
    guidance_scale=5.0,
)

# the paper's AdamW (section 4.1) with a learning rate a tiny random model learns at in a few steps
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8),
    clip_grad=dict(max_norm=1.0))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=8)
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    collate_fn=dict(type='portrait_collate'),
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='CaptionedImageDataset', images=['sample://astronaut', 'sample://grace_hopper',
                                                       'sample://camera'],
                 captions=captions, resize=image_size, flip=True, repeat=4),
)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=2),
    checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False, max_keep_ckpts=2))
