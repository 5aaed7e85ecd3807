"""RAM / DAPE tagger parts: loralib's LoRA layout, OSEDiff's preprocessing, RAMLora's threshold rule, the files it
reads (model zoo, resolver, offline errors), batching and caching, and use as TagPrompter's tagger.

The comparison with the reference implementation itself is in ``tests/test_models/test_taggers/test_taggers_parity.py``.
"""
import logging
import re

import pytest
import torch
import torchvision.transforms as T

from portraitisr.apis import model_zoo
from portraitisr.weights import WeightsNotFoundError
from portraitisr.models.taggers import (DAPE_WEIGHTS, RAM_TAG_LIST, RAM_TAG_THRESHOLDS, RAM_WEIGHTS, DAPETagger,
                                        LoRALinear, RAMTagger, SwinTransformer, class_thresholds, dape_state_dict,
                                        ram_preprocess, ram_state_dict, read_tag_list, read_thresholds)
from portraitisr.registry import PROMPTERS

pytest_plugins = ('tests.helpers.file_server',)
pytestmark = pytest.mark.usefixtures('one_torch_thread')  # small ops: threads only contend

TAGS = ['person', 'face', 'hair', 'smile', 'sky', 'black and white']
SMALL = dict(swin=dict(image_size=64, embed_dim=4, depths=(2, 2), num_heads=(1, 2), window_size=4),
             head=dict(hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16))


def _small(cls=RAMTagger, **kwargs) -> RAMTagger:
    torch.manual_seed(0)
    options = dict(pretrained=False, tag_list=TAGS, thresholds=0.5, **SMALL)
    options.update(kwargs)
    return cls(**options)


# ------------------------------------------------------------------------------------------------ LoRA layout
def test_lora_linear_has_loralib_merged_linear_layout_and_maths():
    """Swin's qkv in DAPE: lora.MergedLinear(dim, 3 dim, r=8, enable_lora=[True, False, True]), scaling 1/8."""
    torch.manual_seed(0)
    dim, rank = 6, 8
    layer = LoRALinear(dim, 3 * dim, rank, enable_lora=(True, False, True))
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {
        'weight': (18, 6), 'bias': (18,), 'lora_A': (16, 6), 'lora_B': (12, 8)}
    x = torch.randn(5, dim)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))  # B starts at 0
    with torch.no_grad():
        layer.lora_B.normal_()
    a, b = layer.lora_A, layer.lora_B
    delta = torch.cat([b[:dim] @ a[:rank], torch.zeros(dim, dim), b[dim:] @ a[rank:]]) / rank  # q, k, v rows
    torch.testing.assert_close(layer(x), x @ (layer.weight + delta).T + layer.bias)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    layer.train()  # loralib merges in eval() and unmerges in train(); nothing here changes the parameters
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())


def test_lora_linear_single_group_is_loralib_linear():
    """BERT query/key in DAPE: lora.Linear(in, out, r=8): A is r x in, B is out x r."""
    layer = LoRALinear(12, 8, 8)
    assert tuple(layer.lora_A.shape) == (8, 12) and tuple(layer.lora_B.shape) == (8, 8)
    with torch.no_grad():
        layer.lora_B.normal_()
    torch.testing.assert_close(layer.delta_weight(), layer.lora_B @ layer.lora_A / 8)


# ------------------------------------------------------------------------------------------------ preprocessing
@pytest.mark.parametrize('antialias', [False, True])
def test_preprocessing_is_osediffs_ram_transforms(antialias):
    """test_osediff.py: Resize((384, 384)) on the [0, 1] tensor (no antialias under its torchvision 0.15), then
    ImageNet Normalize; a non-square image is squashed."""
    images = torch.rand(2, 3, 300, 520, generator=torch.Generator().manual_seed(1))
    reference = T.Compose([T.Resize((384, 384), antialias=antialias),
                           T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])(images)
    ours = ram_preprocess(images, antialias=antialias)
    assert ours.shape == (2, 3, 384, 384)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    if not antialias:
        assert (ours - ram_preprocess(images, antialias=True)).abs().max() > 0.05  # the choice matters


def test_preprocessing_rejects_bad_input():
    with pytest.raises(ValueError, match='B x 3 x H x W'):
        ram_preprocess(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match='float images'):
        ram_preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match='64 x 64'):
        SwinTransformer(image_size=64, embed_dim=4, depths=(2, 2), num_heads=(1, 2), window_size=4)(
            torch.rand(1, 3, 32, 32))


# ------------------------------------------------------------------------------------------------ vocabulary
def test_threshold_rule_of_ramlora():
    """RAMLora: a value above max_threthold is kept, any other becomes min(value + add_threthold, max)."""
    values = [0.95, 0.9, 0.86, 0.5, 1.0]
    assert class_thresholds(values, 5).tolist() == torch.tensor(values).tolist()  # defaults: the file itself
    expected = torch.tensor([0.95, 0.9, 0.9, 0.55, 1.0])
    assert torch.equal(class_thresholds(values, 5, max_threshold=0.9, add_threshold=0.05), expected)
    assert torch.equal(class_thresholds(0.68, 3), torch.full((3,), 0.68))
    with pytest.raises(ValueError, match='5 thresholds for 4 tags'):
        class_thresholds(values, 4)


def test_tag_files_are_read_like_ramlora(tmp_path):
    (tmp_path / 'tags.txt').write_text('3D CG rendering\nblack and white\nzoo', encoding='utf-8')  # no final newline
    assert read_tag_list(tmp_path / 'tags.txt') == ['3D CG rendering', 'black and white', 'zoo']
    (tmp_path / 'thresholds.txt').write_text('0.65\n0.8 \n1\n', encoding='utf-8')
    assert read_thresholds(tmp_path / 'thresholds.txt') == [0.65, 0.8, 1.0]
    (tmp_path / 'bad.txt').write_text('0.65\nzoo\n', encoding='utf-8')
    with pytest.raises(ValueError, match="line 2: 'zoo'"):
        read_thresholds(tmp_path / 'bad.txt')


# ------------------------------------------------------------------------------------------------ the tagger
def test_tagger_outputs_tags_in_list_order_and_stays_frozen():
    tagger = _small(thresholds=[0.5, 0.0, 1.0, 0.0, 1.0, 0.0])  # 0: sigmoid > 0 always, 1: never
    images = torch.rand(3, 3, 40, 70)
    tags = tagger(images)
    assert len(tags) == 3
    for row in tags:
        assert {'face', 'smile', 'black and white'} <= set(row) and not {'hair', 'sky'} & set(row)
        assert row == [t for t in TAGS if t in row]  # RAM's order
    assert tagger.tag_strings(images) == [', '.join(row) for row in tags]
    tagger.train()
    assert not tagger.training and not any(m.training for m in tagger.modules())
    assert not any(p.requires_grad for p in tagger.parameters())


def test_tag_batches_and_caches_by_key(monkeypatch):
    tagger = _small(batch_size=2, cache_size=3)
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = tagger(images)
    calls = []
    forward = tagger.forward
    monkeypatch.setattr(tagger, 'forward', lambda x: calls.append(x.shape[0]) or forward(x))
    keys = ['a', 'b', 'c', 'd', 'e']
    assert tagger.tag(images, keys) == expected
    assert calls == [2, 2, 1]  # batch_size images per pass
    calls.clear()
    assert tagger.tag(images[2:], keys[2:]) == expected[2:]  # c, d, e are the 3 most recent
    assert calls == []
    assert tagger.tag(images[:2], keys[:2]) == expected[:2]  # a, b were dropped (cache_size 3)
    assert calls == [2]
    assert tagger.tag(images) == expected  # no keys: always computed
    with pytest.raises(ValueError, match='2 keys for 5 images'):
        tagger.tag(images, ['a', 'b'])


def test_tag_prompter_takes_the_tagger_from_its_config():
    """TagPrompter builds ``tagger=`` from PROMPTERS and formats its tags with OSEDiff's templates."""
    prompter = PROMPTERS.build(dict(type='TagPrompter', tagger=dict(
        type='RAMTagger', pretrained=False, tag_list=TAGS, thresholds=[0.0, 1.0, 0.0, 1.0, 1.0, 1.0], **SMALL)))
    images = torch.rand(2, 3, 48, 48)
    assert prompter.eval()(images) == ['person, hair, ,'] * 2  # f"{tags}, {prompt}," with the empty prompt
    assert prompter.train()(images) == ['person, hair'] * 2
    assert not prompter.tagger.training


def _tagger_cfg(thresholds, **kwargs) -> dict:
    return dict(type='RAMTagger', pretrained=False, tag_list=TAGS, thresholds=thresholds, **SMALL, **kwargs)


def test_tag_prompter_tags_training_images_and_inputs_with_their_own_taggers():
    """OSEDiff: RAM on the GT in training (``train_tagger``), DAPE on the LQ at test time (``tagger``)."""
    prompter = PROMPTERS.build(dict(type='TagPrompter', tagger=_tagger_cfg([0.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
                                    train_tagger=_tagger_cfg([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])))
    images = torch.rand(2, 3, 48, 48)
    assert prompter._taggers == {}  # nothing built before the first batch
    assert prompter.train()(images) == ['sky'] * 2
    assert set(prompter._taggers) == {'train'}  # a training run without validation never builds the test tagger
    assert prompter.eval()(images) == ['person, ,'] * 2
    assert prompter._taggers['train'] is not prompter._taggers['test']
    # one config for both modes builds one model
    shared = PROMPTERS.build(dict(type='TagPrompter', tagger=_tagger_cfg(0.5)))
    shared.train()(images)
    shared.eval()(images)
    assert shared._taggers['train'] is shared._taggers['test']


def test_tag_prompter_keeps_taggers_out_of_the_model_state():
    """Checkpoints, optimisers and DDP see the restorer, not the frozen taggers; .to() still reaches them."""
    prompter = PROMPTERS.build(dict(type='TagPrompter', tagger=_tagger_cfg(0.5)))
    prompter.eval()(torch.rand(1, 3, 48, 48))
    assert prompter.tagger is not None
    assert list(prompter.state_dict()) == [] and list(prompter.parameters()) == []
    prompter.to(torch.float64)
    assert prompter.tagger.label_embed.dtype == torch.float64
    prompter(torch.rand(1, 3, 48, 48))  # _ready() puts it back to the configured dtype before use
    assert prompter.tagger.label_embed.dtype == torch.float32


def test_building_a_tagger_on_first_use_leaves_the_random_stream_alone():
    """The tagger is built inside a seeded evaluation step: its initialisation must not shift the posterior noise
    the step draws next (the first restore would differ from every later one)."""
    images = torch.rand(1, 3, 48, 48)
    prompter = PROMPTERS.build(dict(type='TagPrompter', tagger=_tagger_cfg(0.5))).eval()
    torch.manual_seed(0)
    prompter(images)  # builds the tagger
    after_build = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after_build, torch.rand(4))


def test_tag_prompter_tags_an_evaluation_input_once(monkeypatch):
    prompter = PROMPTERS.build(dict(type='TagPrompter', tagger=_tagger_cfg(0.5, cache_size=8))).eval()
    tagger = prompter.tagger
    calls = []
    original = tagger.forward
    monkeypatch.setattr(tagger, 'forward', lambda images: calls.append(images.shape[0]) or original(images))
    first, second = torch.rand(1, 3, 48, 48), torch.rand(1, 3, 48, 48)
    expected = prompter(torch.cat([first, second]))
    assert calls == [2]
    assert prompter(torch.cat([second, first])) == expected[::-1]  # same pixels: no second run
    assert calls == [2]
    prompter(second + 1e-3)  # other pixels: tagged
    assert calls == [2, 1]
    prompter.train()(first)  # training crops are never looked up
    assert calls == [2, 1, 1]


def test_tag_prompter_without_tagger_weights_errors_or_warns_once(weight_env, no_internet, mmengine_records):
    images = torch.rand(2, 3, 48, 48)
    missing = dict(type='RAMTagger', weights='ram_swin_large_14m.pth', tag_list=TAGS, thresholds=0.5, **SMALL)
    strict = PROMPTERS.build(dict(type='TagPrompter', tagger=missing))  # built lazily: no error yet
    with pytest.raises(WeightsNotFoundError, match=r"'ram_swin_large_14m\.pth' not found"):
        strict.eval()(images)
    lenient = PROMPTERS.build(dict(type='TagPrompter', tagger=missing, if_tagger_missing='warn'))
    for _ in range(2):
        assert lenient.eval()(images, [dict(tags=['cat']), {}]) == ['cat, ,', '']  # metainfo tags, else none
    warnings = [r.getMessage() for r in mmengine_records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if 'cannot be built' in w]) == 1
    assert "RAMTagger that tags the inputs cannot be built" in warnings[0]
    assert 'ram_swin_large_14m.pth' in warnings[0] and 'portraitisr download' in warnings[0]
    with pytest.raises(ValueError, match='if_tagger_missing'):
        PROMPTERS.build(dict(type='TagPrompter', if_tagger_missing='ignore'))


def test_dape_tagger_adds_lora_to_qkv_and_the_cross_attention():
    dape = _small(DAPETagger)
    lora = {k for k in dape.state_dict() if 'lora_' in k}
    plain = set(_small().state_dict())
    assert plain == set(dape.state_dict()) - lora
    assert len(lora) == 2 * (4 + 2 * 2)  # A and B: 4 Swin blocks, query and key of 2 head layers
    assert 'visual_encoder.layers.1.blocks.1.attn.qkv.lora_A' in lora
    assert 'tagging_head.encoder.layer.1.crossattention.self.key.lora_B' in lora
    assert not any('.value.' in k or '.proj.' in k or 'mlp' in k for k in lora)


def test_option_errors_are_clear():
    with pytest.raises(ValueError, match='needs lora_weights'):
        RAMTagger(lora_rank=8, lora_weights=None, tag_list=TAGS, thresholds=0.5)
    with pytest.raises(ValueError, match='needs lora_rank > 0'):
        RAMTagger(lora_weights='DAPE.pth', tag_list=TAGS, thresholds=0.5)
    with pytest.raises(ValueError, match='6 tags'):
        _small(thresholds=[0.5, 0.5])


# ------------------------------------------------------------------------------------------------ checkpoints
def test_ram_checkpoint_conversion_follows_load_checkpoint_swinlarge():
    w = torch.zeros(1)
    converted = ram_state_dict({'model': {
        'vision_multi.encoder.layer.0.output.dense.weight': w, 'fc.weight': w,
        'visual_encoder.layers.0.blocks.1.attn_mask': w,
        'visual_encoder.layers.0.blocks.0.attn.relative_position_index': w,
        'tag_encoder.encoder.layer.0.output.dense.weight': w, 'text_decoder.cls.predictions.bias': w},
        'optimizer': {'state': {}}, 'epoch': 3})
    assert set(converted) == {'tagging_head.encoder.layer.0.output.dense.weight', 'fc.weight'}
    with pytest.raises(ValueError, match='not tensors'):
        ram_state_dict({'fc.weight': w, 'epoch': 3})


def test_dape_checkpoint_refuses_a_lora_the_reference_would_fold_into_the_head():
    """The tag_encoder layers tied to the tagging head must carry a zero LoRA (as in DAPE.pth)."""
    key = 'tag_encoder.encoder.layer.1.crossattention.self.query.lora_B'
    lora = {'fc.lora_A': torch.ones(1), key: torch.zeros(2, 2), 'text_decoder.bert.x.lora_B': torch.ones(2)}
    assert set(dape_state_dict(lora)) == {'fc.lora_A'}
    with pytest.raises(ValueError, match=re.escape(key)):
        dape_state_dict(dict(lora, **{key: torch.ones(2, 2)}))


# ------------------------------------------------------------------------------------------------ files, offline
def test_defaults_are_the_model_zoo_entries():
    zoo = model_zoo.load_index()
    for name, spec in [('ram_swin_large_14m', RAM_WEIGHTS), ('dape', DAPE_WEIGHTS), ('ram_tag_list', RAM_TAG_LIST),
                       ('ram_tag_list_threshold', RAM_TAG_THRESHOLDS)]:
        entry = zoo.weights[name]
        assert (entry.filename, entry.url, entry.sha256) == (spec['filename'], spec['url'], spec['sha256']), name
        assert entry.verified


def test_offline_missing_files_name_what_is_missing(weight_env, no_internet):
    with pytest.raises(WeightsNotFoundError, match=r"'ram_tag_list\.txt' not found") as error:
        RAMTagger()
    assert 'PORTRAITISR_HOME' in str(error.value) or str(weight_env['home']) in str(error.value)
    with pytest.raises(WeightsNotFoundError, match=r"'ram_swin_large_14m\.pth' not found"):
        RAMTagger(tag_list=TAGS, thresholds=0.68, **SMALL)
    weight_env['home'].mkdir()
    torch.save({'model': _small().state_dict()}, weight_env['home'] / 'ram_swin_large_14m.pth')
    with pytest.raises(WeightsNotFoundError, match=r"'DAPE\.pth' not found"):
        DAPETagger(weights='ram_swin_large_14m.pth', tag_list=TAGS, thresholds=0.68, **SMALL)
    # the cached RAM file (found by name) loads strictly into the small tagger
    tagger = RAMTagger(weights='ram_swin_large_14m.pth', tag_list=TAGS, thresholds=0.68, **SMALL)
    assert torch.equal(tagger.label_embed, _small().label_embed)
