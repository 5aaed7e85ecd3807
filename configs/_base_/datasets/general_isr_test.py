# Table 3 of HeadsUp (arXiv 2510.09924) = the GISR protocol of OSEDiff/PiSA-SR: DIV2K-val (StableSR's 3k 512 crops),
# RealSR and DRealSR (OSEDiff's preset/datasets/benchmark_*), 128x128 LQ -> 512x512, scored as OSEDiff's
# test_metrics.py does (pyiqa; PSNR/SSIM on Y of YCbCr, no border crop; FID folder to folder).
# Models that restore at the output size (OSEDiff, HeadsUp) get the LQ upscaled x4 with PIL bicubic, as
# test_osediff.py does (`general_test_sets`); blending baselines upscale with their own SR model and take the
# native LQ (`general_test_sets_native_lq`).
general_data_root = 'data'


def _general_set(name, folder, lq_upscale):
    return dict(
        name=name,
        table='general',
        dataloader=dict(
            batch_size=1,
            num_workers=2,
            sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
            dataset=dict(type='PairedImageFolderDataset', lq_root=f'{general_data_root}/{folder}/test_LR',
                         gt_root=f'{general_data_root}/{folder}/test_HR', upscale=lq_upscale)),
        evaluator=[dict(type=metric, prefix=name) for metric in (
            'PSNR', 'SSIM', 'LPIPS', 'DISTS', 'FID', 'NIQE', 'MUSIQ', 'CLIPIQA', 'MANIQA')])


_general_folders = [('DIV2K', 'div2k_val'), ('RealSR', 'benchmark_realsr'), ('DRealSR', 'benchmark_drealsr')]
general_test_sets = [_general_set(name, folder, 4) for name, folder in _general_folders]
general_test_sets_native_lq = [_general_set(name, folder, 1) for name, folder in _general_folders]
