"""PortraitSR ablations (AAAI 2026, Tables 2-5): each switch removes or replaces its part exactly, the training model
drops the losses of a removed part, and every ablation config builds with tiny parts and trains and validates one
step on real faces (scikit-image's LFW crops)."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.optim import OptimWrapper
from safetensors.torch import save_file

from portraitisr.models.face_sr import PortraitSRNet
from portraitisr.registry import DATASETS, METRICS, MODELS
from tests.helpers.data_files import REPO_ROOT

TINY = dict(dim=8, depths=(1, 1, 1, 1), heads=(1, 1, 2, 2), ffn_expansion=2.0, refine_depth=0, dict_size=16,
            dict_channels=64, num_parsing_classes=5, num_regions=2)
PARTS = ('ssp.', 'atp.', 'hpf.', 'rec_encoder.', 'decoder_structure.')
ABLATIONS = REPO_ROOT / 'configs' / 'portraitsr' / 'ablations'

# config -> (the rows it reproduces, the generator switches it must set)
BASELINE = dict(structure_prior=None, texture_prior=None, holistic_fusion=False)
EXPECTED = {
    'baseline_x8_celeba.py': ('Table 2, row 1', BASELINE),
    'ssp_x8_celeba.py': ('Table 2, row 2', dict(structure_prior='ssp', texture_prior=None, holistic_fusion=False)),
    'atp_x8_celeba.py': ('Table 2, row 3', dict(structure_prior=None, texture_prior='joint', holistic_fusion=False)),
    'ssp_atp_x8_celeba.py': ('Table 2, row 4',
                             dict(structure_prior='ssp', texture_prior='joint', holistic_fusion=False)),
    'pm_supervision_x8_celeba.py': ('Table 3, row 2', dict(BASELINE, structure_prior='supervision')),
    'pm_add_x8_celeba.py': ('Table 3, row 3', dict(BASELINE, structure_prior='add')),
    'pm_attention_x8_celeba.py': ('Table 3, row 4', dict(BASELINE, structure_prior='attention')),
    'pm_concat_x8_celeba.py': ('Table 3, row 5', dict(BASELINE, structure_prior='concat')),
    'hd_rf_x8_celeba.py': ('Table 4, row 2', dict(BASELINE, texture_prior='fixed')),
    'hd_retrain_x8_celeba.py': ('Table 4, row 3', dict(BASELINE, texture_prior='fixed')),
    'decoder_fusion_1layer_x8_celeba.py': ('Table 5, row 2', dict(decoder_structure_layers=1)),
    'decoder_fusion_2layer_x8_celeba.py': ('Table 5, row 3', dict(decoder_structure_layers=2)),
    'decoder_fusion_3layer_x8_celeba.py': ('Table 5, row 4', dict(decoder_structure_layers=3)),
}


def _parts(net) -> set:
    return {part for part in PARTS if any(name.startswith(part) for name, _ in net.named_parameters())}


def _net(**switches) -> PortraitSRNet:
    torch.manual_seed(0)
    return PortraitSRNet(**TINY, **switches)


@pytest.fixture(scope='module')
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)


@pytest.mark.parametrize('switches, parts, outputs', [
    (dict(), set(PARTS) - {'decoder_structure.'}, {'sr', 'parsing', 'rec'}),
    (BASELINE, set(), {'sr'}),
    (dict(texture_prior=None, holistic_fusion=False), {'ssp.'}, {'sr', 'parsing'}),
    (dict(structure_prior=None, holistic_fusion=False), {'atp.', 'rec_encoder.'}, {'sr', 'rec'}),
    (dict(holistic_fusion=False), {'ssp.', 'atp.', 'rec_encoder.'}, {'sr', 'parsing', 'rec'}),
    (dict(decoder_structure_layers=2), set(PARTS), {'sr', 'parsing', 'rec'}),
])
def test_switches_remove_parameters_and_outputs(images, switches, parts, outputs):
    net = _net(**switches)
    assert _parts(net) == parts
    lq, hr = images
    out = net(lq, hr)
    assert set(out) == outputs and out['sr'].shape == lq.shape
    if 'rec' not in outputs:
        with pytest.raises(RuntimeError, match='no reconstruction branch'):
            net.reconstruct(hr)


def test_removed_hpf_decodes_the_last_prior_in_the_chain(images):
    lq, _ = images
    with torch.no_grad():
        baseline = _net(**BASELINE)
        latent, skips = baseline.encoder(lq)
        torch.testing.assert_close(baseline(lq)['sr'], baseline.decoder(latent, skips))  # D_sr(F_latent)

        ssp_only = _net(texture_prior=None, holistic_fusion=False)
        latent, skips = ssp_only.encoder(lq)
        ssp, parsing = ssp_only.ssp(latent)
        out = ssp_only(lq)
        torch.testing.assert_close(out['sr'], ssp_only.decoder(ssp, skips))  # D_sr(F_SSP)
        torch.testing.assert_close(out['parsing'], parsing)

        atp_only = _net(structure_prior=None, holistic_fusion=False)
        latent, skips = atp_only.encoder(lq)
        torch.testing.assert_close(atp_only(lq)['sr'], atp_only.decoder(atp_only.atp(latent), skips))  # D_sr(F_ATP)

        chain = _net(holistic_fusion=False)
        latent, skips = chain.encoder(lq)
        torch.testing.assert_close(chain(lq)['sr'], chain.decoder(chain.atp(chain.ssp(latent)[0]), skips))


@pytest.mark.parametrize('fusion, module', [('supervision', None), ('attention', 'attention'),
                                            ('concat', 'fuse'), ('add', 'project')])
def test_table3_fusions_keep_pm_supervision_and_replace_the_modulation(images, fusion, module):
    net = _net(structure_prior=fusion, texture_prior=None, holistic_fusion=False)
    names = {name.split('.')[1] for name, _ in net.named_parameters() if name.startswith('ssp.')}
    assert names == {'parsing_decoder'} | ({module} if module else set())  # no `modulation` (Eq. 2) conv
    lq, _ = images
    with torch.no_grad():
        latent, skips = net.encoder(lq)
        features, parsing = net.ssp.parsing_decoder(latent)
        expected = {'supervision': lambda: latent,
                    'attention': lambda: latent * torch.sigmoid(net.ssp.attention(features)),
                    'concat': lambda: net.ssp.fuse(torch.cat([latent, features], 1)),
                    'add': lambda: latent + net.ssp.project(features)}[fusion]()
        out = net(lq)
        torch.testing.assert_close(out['sr'], net.decoder(expected, skips))
        torch.testing.assert_close(out['parsing'], parsing)  # P_hat is still predicted, so L_pm applies


def test_decoder_fusion_layers_modulate_the_first_stages(images):
    lq, _ = images
    full = _net()
    for layers in (1, 2, 3):
        net = _net(decoder_structure_layers=layers)
        assert [m.conv.out_channels for m in net.decoder_structure] == [32, 16, 8][:layers]  # 4C, 2C, C
        missing, unexpected = net.load_state_dict(full.state_dict(), strict=False)
        assert not unexpected and all(k.startswith('decoder_structure.') for k in missing)
        with torch.no_grad():
            for modulation in net.decoder_structure:  # gamma = 1, beta = 0: the identity (Eq. 3)
                modulation.conv.weight.zero_()
                half = modulation.conv.out_channels // 2
                modulation.conv.bias.copy_(torch.cat([torch.ones(half), torch.zeros(half)]))
            torch.testing.assert_close(net(lq)['sr'], full(lq)['sr'])
            net.decoder_structure[-1].conv.bias[-1] = 0.5  # a shift in the last injected stage changes the output
            assert not torch.allclose(net(lq)['sr'], full(lq)['sr'])


def test_fixed_dictionary_loads_safely_and_never_trains(tmp_path, images):
    torch.manual_seed(3)
    narrow = torch.randn(24, 16)  # narrower than the 64-wide latent, like RestoreFormer's 256 vs 384
    save_file({'codebook': narrow}, str(tmp_path / 'hd.safetensors'))
    torch.save({'state_dict': {'vqvae.quantize.embedding.weight': narrow, 'other.weight': torch.randn(3, 3)}},
               tmp_path / 'hd.pth')
    switches = dict(structure_prior=None, holistic_fusion=False, texture_prior='fixed')
    net = _net(**switches, dictionary_weights=str(tmp_path / 'hd.safetensors'))
    assert _parts(net) == {'atp.'} and not hasattr(net, 'rec_encoder')
    assert 'atp.dictionary' in net.state_dict() and 'atp.dictionary' not in dict(net.named_parameters())
    assert net.atp.projection.weight.shape == (64, 16)
    torch.testing.assert_close(net.atp.dictionary, narrow)
    keyed = _net(**switches, dictionary_weights=str(tmp_path / 'hd.pth'),
                 dictionary_key='vqvae.quantize.embedding.weight')
    torch.testing.assert_close(keyed.atp.dictionary, narrow)
    with pytest.raises(KeyError, match='2-D tensors'):
        _net(**switches, dictionary_weights=str(tmp_path / 'hd.pth'))
    with pytest.raises(KeyError, match='no dictionary'):
        _net(**switches, dictionary_weights=str(tmp_path / 'hd.pth'), dictionary_key='quantize.weight')
    same_width = _net(**switches, dictionary_weights=torch.randn(10, 64))
    assert same_width.atp.projection is None
    lq, hr = images
    assert set(net(lq, hr)) == {'sr'}  # no reconstruction branch


@pytest.mark.parametrize('switches, message', [
    (dict(structure_prior=None), 'holistic_fusion'),
    (dict(texture_prior=None), 'holistic_fusion'),
    (dict(structure_prior=None, holistic_fusion=False, decoder_structure_layers=1), 'needs a structure_prior'),
    (dict(decoder_structure_layers=4), '0..3'),
    (dict(structure_prior='cross'), 'structure_prior must be'),
    (dict(texture_prior='frozen'), 'texture_prior must be'),
    (dict(texture_prior='fixed', holistic_fusion=False), 'dictionary_weights'),
    (dict(dictionary_weights=torch.zeros(4, 64)), 'dictionary_weights'),
])
def test_impossible_combinations_fail_clearly(switches, message):
    with pytest.raises(ValueError, match=message):
        PortraitSRNet(**TINY, **switches)


@pytest.mark.parametrize('switches, losses', [
    (dict(), {'loss_l1', 'loss_parsing', 'loss_rec', 'loss_dict'}),
    (BASELINE, {'loss_l1'}),
    (dict(texture_prior=None, holistic_fusion=False), {'loss_l1', 'loss_parsing'}),
    (dict(structure_prior='concat', texture_prior=None, holistic_fusion=False), {'loss_l1', 'loss_parsing'}),
    (dict(structure_prior=None, holistic_fusion=False), {'loss_l1', 'loss_rec', 'loss_dict'}),
    (dict(structure_prior=None, holistic_fusion=False, texture_prior='fixed', dictionary_weights=torch.randn(8, 16)),
     {'loss_l1'}),
])
def test_losses_of_removed_parts_are_absent(images, switches, losses):
    torch.manual_seed(0)
    model = MODELS.build(dict(type='PortraitSR', generator=dict(TINY, **switches), perceptual_loss=None))
    lq, gt = images
    parsing = torch.rand(2, 5, 32, 32).softmax(1)
    assert set(model.loss(lq, gt, parsing)) == losses


@pytest.fixture(scope='module')
def face_items():
    """Real faces as the configs' AlignedFaceDataset gives them at x8 (64x64 GT, 8x8 LR): two training items with
    parsing targets from a random-weight BiSeNet (no parser weights offline) and two held-out validation items."""
    face = dict(type='AlignedFaceDataset', size=64, scale=8)
    train_set = DATASETS.build(dict(face, lfw_range=(0, 2), flip=True,
                                    parser=dict(type='FacexlibFaceParser', pretrained=False, input_size=64)))
    val_set = DATASETS.build(dict(face, lfw_range=(80, 82)))
    return [train_set[0], train_set[1]], [val_set[0], val_set[1]]


def _tiny_config(name: str, tmp_path: Path) -> Config:
    """The ablation config with tiny parts: a tiny network (its switches kept), the shallowest VGG tap with random
    weights, and a tiny dictionary file where the config names one."""
    cfg = Config.fromfile(str(ABLATIONS / name))
    generator = dict(cfg.model.generator)
    switches = {k: generator[k] for k in ('structure_prior', 'texture_prior', 'holistic_fusion',
                                          'decoder_structure_layers', 'dictionary_weights') if k in generator}
    if 'dictionary_weights' in switches:
        torch.manual_seed(5)
        save_file({'dictionary': torch.randn(32, 24)}, str(tmp_path / 'dictionary.safetensors'))
        switches['dictionary_weights'] = str(tmp_path / 'dictionary.safetensors')
    cfg.model.generator = dict(TINY, num_parsing_classes=19, **switches)
    cfg.model.perceptual_loss = dict(type='VGGPerceptualLoss', layers=('relu1_2', ), pretrained=False)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_ablation_config_quotes_its_row_sets_its_switches_and_runs_a_step(name, tmp_path, face_items):
    row, switches = EXPECTED[name]
    header = (ABLATIONS / name).read_text(encoding='utf-8').splitlines()[0]
    assert header.startswith(f'# PortraitSR (AAAI 2026) {row}')
    paper = Config.fromfile(str(ABLATIONS / name))
    assert {k: paper.model.generator[k] for k in switches} == switches
    dataset = paper.train_dataloader.dataset
    assert (dataset.type, dataset.scale, dataset.size) == ('AlignedFaceDataset', 8, 128)  # x8, like face_items
    assert [m['type'] for m in paper.val_evaluator] == ['PSNR', 'SSIM', 'LPIPS', 'VIF']  # Table 5's columns

    cfg = _tiny_config(name, tmp_path)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    train_items, val_items = face_items
    wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=cfg.optim_wrapper.optimizer.lr,
                                            betas=cfg.optim_wrapper.optimizer.betas))
    trained = [p for p in model.generator.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trained]
    fixed = switches.get('texture_prior') == 'fixed'
    dictionary = model.generator.atp.dictionary.clone() if fixed else None
    projection = model.generator.atp.projection.weight.detach().clone() if fixed else None
    log_vars = model.train_step(pseudo_collate(train_items), wrapper)
    structure = switches.get('structure_prior', 'ssp') is not None
    texture = switches.get('texture_prior', 'joint') == 'joint'
    expected_losses = {'loss', 'loss_l1', 'loss_perceptual'} | ({'loss_parsing'} if structure else set()) \
        | ({'loss_rec', 'loss_dict'} if texture else set())
    assert set(log_vars) == expected_losses
    assert all(torch.isfinite(torch.as_tensor(v)) for v in log_vars.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, trained))
    if fixed:  # the given dictionary is held fixed; its width map to the latent trains
        assert torch.equal(model.generator.atp.dictionary, dictionary)
        assert not torch.equal(model.generator.atp.projection.weight, projection)

    model.eval()
    batch = pseudo_collate(val_items)
    outputs = model.val_step(batch)
    for output, item in zip(outputs, val_items):
        assert output['pred'].shape == (3, 64, 64)
        assert torch.equal(output['gt'], item['gt'])  # scored against the dataset's GT, unchanged
    for metric_cfg in paper.val_evaluator:
        if metric_cfg['type'] == 'LPIPS':
            continue  # LPIPS needs its weight files; its path is tested in test_metrics_parity.py
        metric = METRICS.build(metric_cfg)
        metric.process(batch, outputs)
        value = metric.evaluate(2)[f'CelebA/{metric.metric_name}']
        assert torch.isfinite(torch.as_tensor(value))
