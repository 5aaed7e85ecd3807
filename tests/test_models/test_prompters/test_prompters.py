"""Prompters and the cached CLIP text encoder."""
import pytest
import torch

from portraitisr.registry import PROMPTERS


def test_constant_prompters():
    images = torch.zeros(3, 3, 8, 8)
    assert PROMPTERS.build(dict(type='NullPrompter'))(images) == [''] * 3
    fixed = PROMPTERS.build(dict(type='FixedPrompter', prompt='a portrait'))
    assert fixed(images) == ['a portrait'] * 3


def test_tag_prompter_uses_osediff_templates():
    prompter = PROMPTERS.build(dict(type='TagPrompter', prompt='sharp'))
    metainfo = [dict(tags=['man', 'suit']), dict(tags='woman')]
    images = torch.zeros(2, 3, 8, 8)
    prompter.train()
    assert prompter(images, metainfo) == ['man, suit', 'woman']
    prompter.eval()
    assert prompter(images, metainfo) == ['man, suit, sharp,', 'woman, sharp,']
    with pytest.raises(KeyError, match='tagger'):
        prompter(images, [dict(path='x.png'), {}])
    lenient = PROMPTERS.build(dict(type='TagPrompter', missing='empty'))
    assert lenient.train()(images, [{}, {}]) == ['', '']
    assert lenient.eval()(images, [{}, dict(tags=['cat'])]) == ['', 'cat, ,']


def test_bundled_tokenizer_is_clips(tiny_text_encoder):
    tokenizer = tiny_text_encoder.tokenizer
    assert len(tokenizer) == 49408
    ids = tokenizer(['a photo of a cat, high quality'], padding='max_length', max_length=77,
                    truncation=True).input_ids[0]
    # OpenAI CLIP / open_clip ids for this sentence; SD 2.x pads with "!" (id 0).
    assert ids[:10] == [49406, 320, 1125, 539, 320, 2368, 267, 1400, 3027, 49407]
    assert ids[10:] == [0] * 67


def test_text_encoder_caches_each_prompt_once(tiny_text_encoder, monkeypatch):
    tiny_text_encoder._cache.clear()
    calls = []
    original = tiny_text_encoder.encode

    def counting(prompts):
        calls.append(list(prompts))
        return original(prompts)

    monkeypatch.setattr(tiny_text_encoder, 'encode', counting)
    first = tiny_text_encoder(['', 'a', ''])
    second = tiny_text_encoder(['a', ''])
    assert calls == [['', 'a']]
    assert first.shape == (3, 77, 32)
    torch.testing.assert_close(second[0], first[1])
    torch.testing.assert_close(first[0], first[2])
    assert not torch.equal(first[0], first[1])
    with pytest.raises(TypeError):
        tiny_text_encoder('a single string')


def test_text_encoder_stays_frozen_in_eval(tiny_text_encoder):
    tiny_text_encoder.train()
    assert not tiny_text_encoder.training and not tiny_text_encoder.text_model.training
    assert not any(p.requires_grad for p in tiny_text_encoder.parameters())


def _warnings(records):
    import logging
    return [r.getMessage() for r in records if r.levelno == logging.WARNING]


def test_empty_prompts_warn_once_when_the_model_was_trained_with_prompts(mmengine_records):
    images = torch.zeros(2, 3, 8, 8)
    tagged = PROMPTERS.build(dict(type='TagPrompter', missing='empty'))  # tag prompts: trained with prompts
    assert tagged.trained_with_prompts
    assert tagged.eval()(images, [dict(tags=['man']), dict(tags=['cat'])]) == ['man, ,', 'cat, ,']
    assert _warnings(mmengine_records) == []  # prompts with words: nothing to say
    for _ in range(3):  # training and evaluation batches without tags: one warning in all
        assert tagged.train()(images, [{}, {}]) == ['', '']
        assert tagged.eval()(images, [{}, dict(tags=['cat'])]) == ['', 'cat, ,']
    messages = _warnings(mmengine_records)
    assert len(messages) == 1
    assert 'TagPrompter: 2 of 2 prompts are empty' in messages[0]
    assert '`model.prompter.tagger`' in messages[0] and "metainfo key 'tags'" in messages[0]
    # a second prompter warns once on its own
    fixed = PROMPTERS.build(dict(type='FixedPrompter', prompt='', trained_with_prompts=True))
    fixed(images)
    fixed(images)
    assert len(_warnings(mmengine_records)) == 2 and '`model.prompter.prompt`' in _warnings(mmengine_records)[1]


def test_intentionally_empty_prompts_do_not_warn(mmengine_records):
    images = torch.zeros(2, 3, 8, 8)
    for cfg in (dict(type='NullPrompter'), dict(type='FixedPrompter'), dict(type='FixedPrompter', prompt=''),
                dict(type='TagPrompter', missing='empty', trained_with_prompts=False)):
        prompter = PROMPTERS.build(cfg)
        assert not prompter.trained_with_prompts
        assert prompter(images, [{}, {}]) == ['', '']
    assert _warnings(mmengine_records) == []


def test_paper_configs_declare_prompted_training_and_their_taggers():
    """OSEDiff and HeadsUp were trained on tags: their configs name the taggers (DAPE on the LQ at test time; RAM on
    the GT in OSEDiff's training, DAPE on the LQ in HeadsUp's), and their prompters count as trained with prompts,
    so an empty prompt warns."""
    from mmengine.config import Config

    from tests.helpers.data_files import REPO_ROOT
    train_taggers = {'osediff/osediff_sd21.py': 'RAMTagger', 'headsup/headsup_sd21.py': None,
                     'blending/osediff_osediff_face.py': None}
    for name, train_tagger in train_taggers.items():
        cfg = Config.fromfile(str(REPO_ROOT / 'configs' / name))
        model = cfg.model if 'prompter' in cfg.model else cfg.model.general_restorer.model
        prompter = model.prompter
        assert prompter.type == 'TagPrompter' and prompter.tagger.type == 'DAPETagger', name
        assert (prompter.get('train_tagger') or {}).get('type') == train_tagger, name
        assert PROMPTERS.build(prompter).trained_with_prompts is True, name  # taggers are built on first use only
