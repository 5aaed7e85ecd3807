# AuthFace stage II: highly authentic face restoration (arXiv 2410.09864, sections 3.2 and 4.1), the full
# method (Table 2 (d)). A ControlNet initialised from the stage-I UNet's encoder reads the degraded face; the
# stage-I UNet is frozen; the prompt is null; L_total = L_noise + L_facial with the time-aware latent
# facial feature loss (Eq. 2-4). AdamW, lr 2e-5, batch 48, 512 x 512, four GPUs; FFHQ resized to 512
# with GFP-GAN's degradations. Needs the stage-I checkpoint (configs/authface/authface_stage1_sdxl.py):
#   bash tools/dist_train.sh configs/authface/authface_stage2_sdxl.py 4
_base_ = ['../_base_/default_runtime.py', '../_base_/models/sdxl.py', '../_base_/datasets/authface_train.py']

num_gpus = 4  # section 4.1
image_size = 512  # section 4.1: "512 x 512 for training ControlNet"
total_batch_size = 48  # section 4.1
batch_size_per_gpu = 12  # 12 x 4 GPUs = 48, no accumulation (our split)
# The fine-tuned prior: the last stage-I checkpoint (its UNet weights; the file's optimiser state is not read)
stage1_checkpoint = 'work_dirs/authface_stage1_sdxl/iter_300000.pth'

model = dict(
    type='AuthFace',
    backbone=dict(
        type='ControlNetDiffusion',
        pretrained={{_base_.sdxl_pretrained}},
        # section 3.2: "we freeze the parameters of our fine-tuned SDXL model ... initialize ControlNet with the
        # encoder from our fine-tuned SDXL model while solely training ControlNet"
        unet_weights=stage1_checkpoint,
        train_unet=False,
        conditioning_channels=3,  # the degraded RGB image is the condition c
        conditioning_embedding_out_channels=(16, 32, 96, 256),  # diffusers' default: 8x the latent = the image
        frozen_dtype='bfloat16',
        gradient_checkpointing=True),
    text_encoder={{_base_.sdxl_text_encoder}},
    prompter=dict(type='NullPrompter'),  # section 3.2: null prompts [""]
    facial_loss=dict(
        type='TimeAwareFacialLoss',
        # GFP-GAN's component discriminator on 4-channel latent crops
        discriminator=dict(type='FacialComponentDiscriminator', in_channels=4, base_channels=64),
        vae_factor=8,  # section 3.2: "downsampling with a factor of eight"
        time_weighting='logit_normal',  # Eq. 3
        location=0.0,  # m, s: not stated in the paper; SD3's defaults (our choice)
        scale=1.0,
        adversarial_weight=1.0,  # lambda_d, lambda_s: not stated; GFP-GAN's 1 and 200 (our choice)
        style_weight=200.0),
    # sampling: not stated in the paper; SDXL's released scheduler with 50 steps (our choice)
    inference_scheduler=dict(type='EulerDiscreteScheduler'),
    num_inference_steps=50,
    # large inputs: ControlNet + UNet on 128-latent tiles (1024 px), VAE decoder on 128-latent tiles
    tiling=dict(unet_tile=128, unet_overlap=32, decode_tile=128, decode_overlap=32),
    data_preprocessor=dict(type='PortraitDataPreprocessor', degradation={{_base_.gfpgan_degradation}}),
)

runner_type = 'PortraitFlexibleRunner'
strategy = dict(
    type='FSDP2Strategy',
    shard_modules=['backbone.unet', 'backbone.controlnet', 'facial_loss.discriminators.eyes',
                   'facial_loss.discriminators.mouth'],
    block_classes={{_base_.sdxl_block_classes}},
    mixed_precision={{_base_.sdxl_mixed_precision}})

# section 4.1: "the same optimizer [AdamW] with the learning rate of 2e-5"; the discriminators use GFP-GAN's
optim_wrapper = dict(
    constructor='TrainableParamsOptimWrapperConstructor',
    backbone=dict(type='OptimWrapper',
                  optimizer=dict(type='AdamW', lr=2e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8),
                  clip_grad=dict(max_norm=1.0)),
    facial_loss=dict(type='OptimWrapper', optimizer={{_base_.facial_discriminator_adam}}))
# The paper does not give stage II's length; 50k iterations, as stage I (our choice).
train_cfg = dict(type='IterBasedTrainLoop', max_iters=50000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

train_dataloader = dict(
    batch_size=batch_size_per_gpu,
    num_workers=8,
    persistent_workers=True,
    collate_fn=dict(type='portrait_collate'),
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset={{_base_.ffhq_512_train}},
)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', interval=5000, by_epoch=False, max_keep_ckpts=3))
