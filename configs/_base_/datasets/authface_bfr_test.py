# AuthFace's test sets (arXiv 2410.09864, section 4.1 "Training and Test Dataset" and "Metrics", Table 1), as
# GFP-GAN and CodeFormer distribute them: 512 x 512 aligned faces.
# * CelebA-Test (synthetic, 3,000 pairs): PSNR, SSIM, LPIPS against the GT, and the no-reference MANIQA, MUSIQ,
#   CLIPIQA; FID against the GT set (the paper does not say which reference; our choice).
# * LFW-Test (1,711), WebPhoto-Test (407), WIDER-Test (970): real LQ faces without GT, so no-reference metrics
#   (MANIQA, MUSIQ, CLIPIQA) and FID against FFHQ's statistics (clean-fid's ffhq_clean_trainval70k_512.npz, as
#   GFP-GAN / CodeFormer measure real-world sets against FFHQ; our reading of "FID" there).
# Columns land in the 'general' table layout (PSNR, SSIM, LPIPS, FID, MUSIQ, CLIPIQA, MANIQA; NIQE and DISTS
# stay empty).
_loader = dict(batch_size=1, num_workers=2, sampler=dict(type='DefaultSampler', shuffle=False, seed=0))
_no_reference = ('MANIQA', 'MUSIQ', 'CLIPIQA')
ffhq_fid_stats = 'ffhq_clean_trainval70k_512.npz'

celeba_test_set = dict(
    name='CelebA-Test',
    table='general',
    dataloader=dict(_loader, dataset=dict(type='PairedImageFolderDataset', lq_root='data/celeba_test/lq',
                                          gt_root='data/celeba_test/gt')),
    evaluator=[dict(type=metric, prefix='CelebA-Test') for metric in ('PSNR', 'SSIM', 'LPIPS', *_no_reference)]
    + [dict(type='FID', prefix='CelebA-Test')])
lfw_test_set = dict(
    name='LFW-Test',
    table='general',
    dataloader=dict(_loader, dataset=dict(type='PairedImageFolderDataset', lq_root='data/lfw_test')),
    evaluator=[dict(type=metric, prefix='LFW-Test') for metric in _no_reference]
    + [dict(type='FID', stats=ffhq_fid_stats, prefix='LFW-Test')])
webphoto_test_set = dict(
    name='WebPhoto-Test',
    table='general',
    dataloader=dict(_loader, dataset=dict(type='PairedImageFolderDataset', lq_root='data/webphoto_test')),
    evaluator=[dict(type=metric, prefix='WebPhoto-Test') for metric in _no_reference]
    + [dict(type='FID', stats=ffhq_fid_stats, prefix='WebPhoto-Test')])
wider_test_set = dict(
    name='WIDER-Test',
    table='general',
    dataloader=dict(_loader, dataset=dict(type='PairedImageFolderDataset', lq_root='data/wider_test')),
    evaluator=[dict(type=metric, prefix='WIDER-Test') for metric in _no_reference]
    + [dict(type='FID', stats=ffhq_fid_stats, prefix='WIDER-Test')])
