# Table 1 of HeadsUp (arXiv 2510.09924) = DAEFR's face-restoration protocol: CelebA-Test, 3,000 aligned 512x512 faces
# with synthetic degradations (LQ and GT pairs at 512), PSNR/SSIM/LPIPS/FID/NIQE and IDA. DAEFR computes FID
# against the GT folder; IDA is DAEFR's arccos distance of ArcFace-ResNet18 embeddings (`IDA_DAEFR`).
celeba_test_sets = [
    dict(
        name='CelebA-Test',
        table='face',
        dataloader=dict(
            batch_size=1,
            num_workers=2,
            sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
            dataset=dict(type='PairedImageFolderDataset', lq_root='data/celeba_test/lq', gt_root='data/celeba_test/gt',
                         upscale=1)),
        evaluator=[dict(type=metric, prefix='CelebA-Test')
                   for metric in ('PSNR', 'SSIM', 'LPIPS', 'FID', 'NIQE', 'IDA_DAEFR')]),
]
