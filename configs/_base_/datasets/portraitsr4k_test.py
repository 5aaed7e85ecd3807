# PortraitSR-4K-Te (paper 000, section 3): portraits with at most one reference per face (the most
# similar), evaluated at 1024x1024 (appendix B) on a crop centred on the face. The LQ is made by
# the degradation with a fixed seed per image, so every evaluation sees the same inputs.
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    collate_fn=dict(type='portrait_collate'),
    # a fixed seed: without one, building the sampler draws from numpy and shifts training crops
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(type='PortraitTripletDataset', manifest='data/portraitsr4k/test.jsonl',
                 data_root='data/portraitsr4k', crop_size=1024, crop_mode='center', ref_size=512,
                 unit='face'),
)
test_evaluator = [dict(type='PSNR', prefix='PortraitSR-4K-Te')]
val_dataloader = test_dataloader
val_evaluator = test_evaluator
