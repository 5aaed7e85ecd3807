# PortraitSR-4K-Te (HeadsUp, arXiv 2510.09924, section 3): portraits with at most one reference per face (the most
# similar), evaluated at 1024x1024 (appendix B) on a crop centred on the face, from a 256x256 LQ (section 4.1:
# "we test our model on our PortraitSR-4K-Te, with the input resolution at 256x256"). The LQ is made on the
# device by `portrait_test_degradation` with a fixed seed per image, so every evaluation and every method sees
# the same inputs: use it as the model's evaluation degradation (`eval_degradation` of SRDataPreprocessor /
# PortraitDataPreprocessor, `degradation` of BlendingDataPreprocessor). Scores compare against the dataset GT,
# never a sharpened one (the preprocessors leave the GT alone in evaluation).
# Table 2's columns: whole-image PSNR/SSIM/LPIPS/DISTS/FID/NIQE/MUSIQ, ID-Score on the faces (GT landmarks from
# the manifest), plus our seam score along the face paste boundary (the artefact HeadsUp attributes to blending).
# HeadsUp's Real-ESRGAN-derived pipeline as OSEDiff runs it (the `osediff` preset: Real-ESRGAN's values, no USM
# - cswry/OSEDiff dataloaders/realesrgan.py comments it out), x4 (1024 -> 256), without OSEDiff's resize back:
# the 256 LQ itself. Models that restore at the output size get it upscaled bicubically by their preprocessor
# (OSEDiff's test script enlarges its LQ x4); the blending baselines take it as it is.
portrait_test_degradation = dict(preset='osediff', resize_back=False)
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
