# HeadsUp's training data (arXiv 2510.09924, appendix B): PortraitSR-4K triplets (HQ portrait, reference
# face, GT landmarks; manifest written by the dataset builder), FFHQ (aligned faces), LSDIR and
# DIV2K, mixed by ratio in two stages: 40k steps at 0.15:0.05:1.7:0.3, then the remaining 110k
# at 1.5:0.5:1.7:0.3. LQs are made online by the Real-ESRGAN degradation. 1024x1024 crops.
# The paper does not give the batch size; 1 per GPU x 8 GPUs fits one A100-40GB per rank.
train_batch_size = 1
train_crop_size = 1024
reference_size = 512  # the aligned FFHQ-template face crops of the dataset builder
mixture_names = ['portraitsr4k', 'ffhq', 'lsdir', 'div2k']
train_dataloader = dict(
    batch_size=train_batch_size,
    num_workers=8,
    persistent_workers=True,
    collate_fn=dict(type='portrait_collate'),
    sampler=dict(
        type='MixtureSampler',
        batch_size=train_batch_size,
        stages=[
            dict(iters=40000, ratios=[0.15, 0.05, 1.7, 0.3]),
            dict(ratios=[1.5, 0.5, 1.7, 0.3]),
        ]),
    dataset=dict(
        type='MixedDataset',
        names=mixture_names,
        datasets=[
            dict(type='PortraitTripletDataset', manifest='data/portraitsr4k/train.jsonl',
                 data_root='data/portraitsr4k', crop_size=train_crop_size, flip=True,
                 ref_size=reference_size, unit='pair', include_unpaired=True),
            # FFHQ 1024 is aligned to the FFHQ template: its landmarks are the template's
            dict(type='ImageFolderDataset', data_root='data/ffhq', crop_size=train_crop_size,
                 flip=True, aligned_face_template='ffhq512'),
            dict(type='ImageFolderDataset', data_root='data/lsdir', crop_size=train_crop_size,
                 flip=True),
            dict(type='ImageFolderDataset', data_root='data/div2k', crop_size=train_crop_size,
                 flip=True),
        ]),
)
