"""RAM / DAPE parity: our tagger reproduces cswry/OSEDiff's own RAMLora on the same files and images.

``tests/data/ram_parity.pt.gz`` was made by ``tools/make_ram_fixture.py``, which built OSEDiff's ``RAMLora`` (its
``ram/`` package) small and random, wrote the two published file layouts (``{'model': ...}`` as
``ram_swin_large_14m.pth``, the flat LoRA dict as SeeSR saves ``DAPE.pth``), loaded them with OSEDiff's own
``ram(pretrained=..., pretrained_condition=...)`` and kept the logits (``condition_forward``) and the tags
(``generate_tag``) of two non-square images preprocessed as ``test_osediff.py`` does. Here the same files, rebuilt
from the fixture, go through the weight resolver and our strict loader; logits must agree to 1e-5 and tags exactly,
for RAM (no LoRA), DAPE, and DAPE with non-default ``max_threshold`` / ``add_threshold``. Measured on CPU, float32:
at most 3.1e-6 on logits of magnitude up to 4 (OSEDiff merges the LoRA into the weights in ``.eval()``, we
add it in ``forward``).

``tests/data/ram_full_size_shapes.json.gz`` holds the name -> shape list of the reference's full-size state dict
(Swin-L 384, BERT-base Tag2Text parts, 4585 tags), built on the meta device by the same tool; our full-size tagger
must have exactly those tensors, less the documented unused prefixes and derived buffers.
"""
import gzip
import io
import json

import pytest
import torch

from portraitisr.models.taggers import RAM_DERIVED_BUFFERS, RAM_UNUSED_PREFIXES, DAPETagger, RAMTagger
from tests.helpers.data_files import TEST_FILES

DATA = TEST_FILES
FIXTURE = DATA / 'ram_parity.pt.gz'
SHAPES = DATA / 'ram_full_size_shapes.json.gz'
TOLERANCE = 1e-5
pytestmark = pytest.mark.usefixtures('one_torch_thread')  # small ops: threads only contend


@pytest.fixture(scope='module')
def reference() -> dict:
    data = torch.load(io.BytesIO(gzip.decompress(FIXTURE.read_bytes())), weights_only=True)
    assert data['format'] == 'portraitisr.ram_parity/1'
    return data


def _unused(shapes: dict) -> dict:
    return {k: torch.zeros(shape, dtype=getattr(torch, dtype)) for k, (shape, dtype) in shapes.items()}


@pytest.fixture(scope='module')
def files(reference, tmp_path_factory) -> dict:
    """The reference's ram_swin_large_14m.pth / DAPE.pth / threshold file, complete again, on disk."""
    folder = tmp_path_factory.mktemp('ram')
    model = {k: v.float() for k, v in reference['ram_model'].items()}
    model.update(_unused(reference['ram_unused']))
    for key, value in reference['derived_buffers'].items():
        model[key] = value.long() if key.endswith('relative_position_index') else value.float()
    torch.save({'model': model}, folder / 'ram_swin_large_14m.pth')
    dape = {k: v.float() for k, v in reference['dape'].items()}
    dape.update(_unused(reference['dape_unused']))
    torch.save(dape, folder / 'DAPE.pth')
    (folder / 'ram_tag_list_threshold.txt').write_text(reference['threshold_file'], encoding='utf-8')
    (folder / 'ram_tag_list.txt').write_text('\n'.join(reference['tags']), encoding='utf-8')
    return {name: str(folder / name) for name in ('ram_swin_large_14m.pth', 'DAPE.pth',
                                                  'ram_tag_list_threshold.txt', 'ram_tag_list.txt')}


def _build(reference: dict, files: dict, case: str) -> RAMTagger:
    options = reference['cases'][case]
    kwargs = dict(weights=files['ram_swin_large_14m.pth'], tag_list=files['ram_tag_list.txt'],
                  thresholds=files['ram_tag_list_threshold.txt'], swin=reference['swin'], head=reference['head'],
                  max_threshold=options.get('max_threthold', 0.9), add_threshold=options.get('add_threthold', 0.0),
                  allow_download=False)
    if options['lora']:
        return DAPETagger(lora_weights=files['DAPE.pth'], **kwargs)
    return RAMTagger(**kwargs)


@pytest.mark.parametrize('case', ['ram', 'dape', 'dape_max0.75_add0.05'])
def test_logits_and_tags_match_osediff_ram(reference, files, case):
    tagger = _build(reference, files, case)
    expected = reference['outputs'][case]
    images = reference['images'].float() / 255  # B x 3 x 96 x 160, squashed to 224 x 224 by preprocess
    with torch.no_grad():
        logits = tagger.logits(tagger.preprocess(images))
    assert (logits - expected['logits']).abs().max().item() < TOLERANCE
    assert torch.equal(tagger.class_threshold, expected['class_threshold'])
    assert tagger.tag_strings(images) == expected['tags']
    assert tagger(images) == [tags.split(', ') if tags else [] for tags in expected['tags']]


def test_the_lora_changes_the_tags(reference):
    """The fixture exercises the LoRA path: DAPE's logits and tags are not RAM's."""
    ram, dape = reference['outputs']['ram'], reference['outputs']['dape']
    assert (ram['logits'] - dape['logits']).abs().max() > 0.1
    assert ram['tags'] != dape['tags']


def test_derived_swin_buffers_equal_the_reference(reference, files):
    tagger = _build(reference, files, 'dape')
    own = dict(tagger.named_buffers())
    assert set(reference['derived_buffers']) == {k for k in own if k.rsplit('.', 1)[-1] in RAM_DERIVED_BUFFERS}
    for key, value in reference['derived_buffers'].items():
        assert torch.equal(own[key].to(value.dtype), value), key


def test_official_files_load_strictly(reference, files, tmp_path):
    """A key the tagger does not know, or one it needs that is missing, is an error naming the key."""
    checkpoint = torch.load(files['ram_swin_large_14m.pth'], weights_only=True)
    extra = dict(checkpoint['model'], **{'visual_encoder.head.weight': torch.zeros(2, 2)})
    torch.save({'model': extra}, tmp_path / 'extra.pth')
    with pytest.raises(ValueError, match=r'unexpected visual_encoder\.head\.weight'):
        _build(reference, dict(files, **{'ram_swin_large_14m.pth': str(tmp_path / 'extra.pth')}), 'ram')
    missing = {k: v for k, v in checkpoint['model'].items() if k != 'fc.bias'}
    torch.save({'model': missing}, tmp_path / 'missing.pth')
    with pytest.raises(ValueError, match=r'missing fc\.bias'):
        _build(reference, dict(files, **{'ram_swin_large_14m.pth': str(tmp_path / 'missing.pth')}), 'ram')
    dape = torch.load(files['DAPE.pth'], weights_only=True)
    key = 'tagging_head.encoder.layer.1.crossattention.self.key.lora_B'
    torch.save({k: v for k, v in dape.items() if k != key}, tmp_path / 'dape_missing.pth')
    with pytest.raises(ValueError, match=re_escape(f'missing {key}')):
        _build(reference, dict(files, **{'DAPE.pth': str(tmp_path / 'dape_missing.pth')}), 'dape')
    torch.save(dict(dape, **{'fc.weight': torch.zeros(1, 16)}), tmp_path / 'dape_extra.pth')
    with pytest.raises(ValueError, match='not LoRA weights'):
        _build(reference, dict(files, **{'DAPE.pth': str(tmp_path / 'dape_extra.pth')}), 'dape')


def re_escape(text: str) -> str:
    import re
    return re.escape(text)


def test_vision_multi_keys_are_renamed_like_the_reference_loader(reference, files, tmp_path):
    """``load_checkpoint_swinlarge`` renames ``vision_multi`` (the tagging head's training name)."""
    checkpoint = torch.load(files['ram_swin_large_14m.pth'], weights_only=True)
    renamed = {k.replace('tagging_head.', 'vision_multi.', 1): v for k, v in checkpoint['model'].items()}
    torch.save({'model': renamed}, tmp_path / 'vision_multi.pth')
    tagger = _build(reference, dict(files, **{'ram_swin_large_14m.pth': str(tmp_path / 'vision_multi.pth')}), 'ram')
    assert tagger.tag_strings(reference['images'].float() / 255) == reference['outputs']['ram']['tags']


@pytest.mark.parametrize('cls', [RAMTagger, DAPETagger])
def test_full_size_names_and_shapes_equal_the_reference(cls):
    reference = json.loads(gzip.decompress(SHAPES.read_bytes()))
    assert reference['format'] == 'portraitisr.ram_full_size_shapes/1'
    expected = {k: shape for k, shape in reference['state_dict'].items()
                if not k.startswith(RAM_UNUSED_PREFIXES) and k.rsplit('.', 1)[-1] not in RAM_DERIVED_BUFFERS}
    if cls is RAMTagger:
        expected = {k: shape for k, shape in expected.items() if 'lora_' not in k}
    with torch.device('meta'):
        tagger = cls(pretrained=False, tag_list=[f'tag {i}' for i in range(4585)], thresholds=0.68)
    assert {k: list(v.shape) for k, v in tagger.state_dict().items()} == expected
    # what is left out is exactly the documented unused parts and derived buffers
    left_out = set(reference['state_dict']) - set(expected) - {k for k in reference['state_dict'] if 'lora_' in k}
    assert all(k.startswith(RAM_UNUSED_PREFIXES) or k.rsplit('.', 1)[-1] in RAM_DERIVED_BUFFERS for k in left_out)
    assert any(k.startswith('tag_encoder.') for k in left_out) and any(k.startswith('text_decoder.') for k in left_out)
