# HeadsUp (paper 000) with the paper's settings: SD 2.1-base, LoRA rank 4 on the VAE encoder and
# the UNet, 9-channel conv_in (LQ latent + reference latent + face mask), OSEDiff's MSE 1 +
# LPIPS-VGG 2 + VSD 1 on the whole image, face fidelity (lambda_fid 1, lambda_LPIPS 0.8) and
# identity (lambda_id 4) losses on FFHQ-aligned faces, a face adversarial loss, references
# dropped with probability 0.2, AdamW 5e-5, 1024x1024, 150k steps in two data stages, 8 GPUs
# (tools/dist_train.sh configs/headsup/headsup_sd21.py 8).
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/sd21.py',
    '../_base_/schedules/osediff_adamw.py', '../_base_/datasets/headsup_train.py',
    '../_base_/datasets/portraitsr4k_test.py', '../_base_/datasets/general_isr_test.py',
    '../_base_/datasets/celeba_test.py'
]
# tools/test.py scores these and writes Tables 1-3 (paper 000, section 4) to <work_dir>/tables/
test_sets = _base_.portrait_test_sets + _base_.general_test_sets + _base_.celeba_test_sets

model = dict(
    type='HeadsUp',
    backbone={{_base_.sd21_headsup_backbone}},
    regularizer={{_base_.sd21_regularizer}},
    text_encoder={{_base_.sd21_text_encoder}},
    # The paper prompts with DAPE tags of the LQ (appendix B); tags computed offline go in the
    # dataset metainfo (`tags` / `tags_file`).
    prompter=dict(type='TagPrompter', missing='empty'),
    lpips_loss=dict(type='LPIPSLoss', net='vgg', loss_weight=2.0),
    l2_weight=1.0,
    vsd_weight=1.0,
    regularizer_weight=1.0,
    # Omega: FFHQ-512 template, cv2.estimateAffinePartial2D (LMEDS) as FaceLib, kornia warp
    # (appendix B "Face Alignment").
    face_aligner=dict(type='FaceAligner', template='ffhq512', estimator='lmeds'),
    face_fidelity_loss=dict(type='FaceFidelityLoss', lpips_weight=0.8, loss_weight=1.0),
    # CVLFace (Kim et al., 2024) as the face recogniser: its AdaFace IR-101 WebFace12M release.
    identity_loss=dict(
        type='IdentityLoss',
        extractor=dict(type='AdaFaceIR', depth=101, channel_order='RGB',
                       weights='cvlface_adaface_ir101_webface12m.safetensors'),
        loss_weight=4.0),
    identity_aligner=dict(type='FaceAligner', template='arcface112'),
    # The paper names L_F^adv but not its discriminator or weight: ours is a spectral-norm
    # PatchGAN judging the 512 face at 256, non-saturating loss, weight 0.1 (GFPGAN's facial GAN
    # weight).
    discriminator=dict(type='FacePatchDiscriminator', input_size=256),
    adversarial_loss=dict(type='GANLoss', gan_type='softplus', loss_weight=0.1),
    ref_dropout=0.2,
    ref_placement='resize',
    color_fix='adain',
    data_preprocessor=dict(type='PortraitDataPreprocessor', degradation='realesrgan'),
)

optim_wrapper = dict(
    discriminator=dict(type='OptimWrapper', optimizer={{_base_.adamw}}, clip_grad=dict(max_norm=1.0)))
# 150k steps: stage 1 (40k) and stage 2 (110k) switch inside the MixtureSampler.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=150000, val_interval=5000)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=5000, by_epoch=False,
                                     max_keep_ckpts=3))
