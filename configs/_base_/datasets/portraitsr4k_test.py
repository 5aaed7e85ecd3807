# PortraitSR-4K-Te (paper 000, section 3): portraits with at most one reference per face (the most
# similar), evaluated at 1024x1024 (appendix B) on a crop centred on the face. The LQ is made by
# the degradation with a fixed seed per image, so every evaluation sees the same inputs.
# Table 2's columns: whole-image PSNR/SSIM/LPIPS/DISTS/FID/NIQE/MUSIQ, ID-Score on the faces (GT landmarks from
# the manifest), plus our seam score along the face paste boundary (the artefact HeadsUp attributes to blending).
portrait_test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    collate_fn=dict(type='portrait_collate'),
    # a fixed seed: without one, building the sampler draws from numpy and shifts training crops
    sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
    dataset=dict(type='PortraitTripletDataset', manifest='data/portraitsr4k/test.jsonl',
                 data_root='data/portraitsr4k', crop_size=1024, crop_mode='center', ref_size=512,
                 unit='face'),
)
# ID-Score is phi of Eq. 4: cosine of the CVLFace embeddings (AdaFace IR-101, the paper's face extractor)
portrait_id_extractor = dict(type='AdaFaceIR', depth=101, channel_order='RGB',
                             weights='cvlface_adaface_ir101_webface12m.safetensors')
portrait_test_evaluator = [
    dict(type=metric, prefix='PortraitSR-4K-Te')
    for metric in ('PSNR', 'SSIM', 'LPIPS', 'DISTS', 'FID', 'NIQE', 'MUSIQ')
] + [
    dict(type='IDScore', extractor=portrait_id_extractor, prefix='PortraitSR-4K-Te'),
    dict(type='SeamScore', prefix='PortraitSR-4K-Te'),
]
portrait_test_sets = [
    dict(name='PortraitSR-4K-Te', table='portrait', dataloader=portrait_test_dataloader,
         evaluator=portrait_test_evaluator)
]
test_dataloader = portrait_test_dataloader
test_evaluator = portrait_test_evaluator
val_dataloader = test_dataloader
val_evaluator = [dict(type='PSNR', prefix='PortraitSR-4K-Te'), dict(type='FacePSNR', prefix='PortraitSR-4K-Te')]
