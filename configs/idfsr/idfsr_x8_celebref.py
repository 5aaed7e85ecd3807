# IDFSR ("Personalized Face Super-Resolution with Identity Decoupling and Fitting", arXiv 2508.10937): stage-1
# pretraining at x8 on CelebRef-HQ and the Table 1 (x8) test rows. Paper settings (section 3.3, section 4.1, Table 4,
# appendix E.2): DiffAE-256 UNet and style encoder initialised from DiffAE's FFHQ-256 weights, 6-channel input
# (noise + masked LR), identity cross-attention on a 512-d ArcFace embedding, DDPM T = 1000 with a linear beta
# schedule, noise-prediction MSE, Adam (no weight decay) at 1e-4, DDIM with 20 steps at inference, four GPUs with a
# batch of 24 each:
#     bash tools/dist_train.sh configs/idfsr/idfsr_x8_celebref.py 4
# Stage 2 (the "FT" rows): fit every test identity on its fine-tuning half, then test with the fitted embeddings:
#     python tools/fit_identity.py --per-identity data/CelebRef-HQ --identities data/CelebRef-HQ/test_identities.txt \
#         --split finetune --aligned --config configs/idfsr/idfsr_x8_celebref.py \
#         --checkpoint work_dirs/idfsr_x8_celebref/iter_200000.pth -o work_dirs/idfsr_x8_celebref/identities
#     python tools/test.py configs/idfsr/idfsr_x8_celebref_ft.py work_dirs/idfsr_x8_celebref/iter_200000.pth
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/idfsr_diffae256.py', '../_base_/schedules/idfsr_adam.py',
    '../_base_/datasets/celebref_hq.py'
]

scale = 8

model = dict(
    type='IDFSR',
    unet={{_base_.idfsr_unet}},
    identity_embedder={{_base_.idfsr_identity_embedder}},
    # appendix E.1: scikit-image's piecewise-affine warp from the landmarks (border anchors: our choice)
    warper=dict(type='ReferenceWarper', transform='piecewise_affine', anchors='border'),
    # section 3.1: the facial region of the LR masked (ellipse from the landmarks: our shape, see FaceRegionMasker)
    masker=dict(type='FaceRegionMasker'),
    lr_condition='masked',
    style_source='warped_reference',
    # pretraining rows ("PT"): the reference photo's embedding at test time (section 4.1)
    test_identity='reference',
    num_train_timesteps=1000,             # section 3.3: T = 1000
    beta_start=1e-4, beta_end=0.02,       # section 3.3: linear beta schedule (DiffAE's 'linear')
    sample_steps=20,                      # section 3.3: DDIM, 20 steps
    init_weights={{_base_.idfsr_diffae_weights}},  # section 3.3: initialised with DiffAE weights (FFHQ)
    data_preprocessor=dict(type='IDFSRDataPreprocessor'),
)

# appendix E.2: four GPUs, a batch of 24 per GPU
num_gpus = 4
train_dataloader = dict(
    batch_size=24,
    num_workers=6,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(_base_.celebref_train, scale=scale),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(_base_.celebref_test, scale=scale),
)
val_evaluator = [dict(type='PSNR'), dict(type='SSIM'), dict(type='LPIPS')]
# Table 1's columns. IDS is DeepFace's cosine distance in the paper; here that of ArcFace IR-SE50 (see
# portraitisr/evaluation/metrics/face_verification.py); IDV (Table 2, at x16) needs the extractor's threshold.
table1_metrics = ('PSNR', 'SSIM', 'LPIPS', 'FID', 'CLIPIQA', 'MUSIQ', 'IDS')
test_dataloader = val_dataloader
test_evaluator = [dict(type=metric, prefix='CelebRef-HQ') for metric in table1_metrics]
test_sets = [
    dict(name=f'CelebRef-HQ x{scale} (PT)', table='face_ref', dataloader=test_dataloader,
         evaluator=[dict(type=metric, prefix='CelebRef-HQ') for metric in table1_metrics]),
]

# stage 2 (tools/fit_identity.py): the paper's optimiser (section 3.3: the same hyper-parameters as pretraining);
# it reports 20 minutes on one RTX 3090 per identity, not a step count: 1000 steps of 4 photos are our choice
identity_fitting = dict(steps=1000, batch_size=4, lr=1e-4, checkpoint_interval=50, seed=0)

default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=10000, by_epoch=False, max_keep_ckpts=3))
