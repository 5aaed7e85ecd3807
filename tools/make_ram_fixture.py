"""Regenerate the RAM / DAPE parity fixtures from cswry/OSEDiff's own RAM code.

``tests/test_models/test_taggers/test_taggers_parity.py`` loads these files into our
:class:`~portraitisr.models.taggers.RAMTagger` / ``DAPETagger`` and checks that they reproduce the reference. Everything
in them is produced by OSEDiff's ``ram`` package (``ram/models/ram_lora.py``, ``swin_transformer_lora.py``,
``bert_lora.py``, ``utils.py``), imported from a checkout at run time; nothing of it is copied into this repository.

``tests/data/ram_parity.pt.gz`` (small random RAM, about 300 KB):

1. a small configuration is written to a scratch folder that replaces the package's ``CONFIG_PATH`` (RAMLora reads
   its Swin config, ``q2l_config.json`` and the threshold file from there): Swin at 224 px with embed dim 4, depths
   (2, 2, 2, 2), heads (1, 2, 2, 4), window 7 (so, as at full size, stages 1-3 have 8 / 4 / 2 windows per side with
   shifted blocks and the last stage is a single unshifted window); tagging head and Tag2Text BERTs with hidden 16,
   2 layers, 4 heads, FFN 32; 24 tags;
2. ``RAMLora`` is built, every parameter (LoRA included) gets random values rounded to float16 (so the fixture
   stores float16 without changing what was computed; both sides compute in float32), and the two published file
   layouts are written: ``{'model': state_dict without lora}`` as ``ram_swin_large_14m.pth`` and the flat
   ``{lora key: tensor}`` dict as SeeSR saves ``DAPE.pth``;
3. OSEDiff's factory ``ram(pretrained=..., pretrained_condition=..., image_size=224, vit='swin_l')`` loads them
   (``load_checkpoint_swinlarge``, ``load_state_dict(strict=False)``), ``.eval()`` merges the LoRA, and
   ``condition_forward(only_feature=False)`` / ``generate_tag`` give the logits and the ``', '``-joined tags of two
   non-square uint8 images resized and normalised as ``test_osediff.py`` does (tensor ``Resize((224, 224))`` without
   antialiasing, torchvision 0.15's default there, then ImageNet ``Normalize``). Three cases: RAM (no LoRA file, as
   OSEDiff's training), DAPE, and DAPE with ``max_threthold=0.75, add_threthold=0.05``. The threshold file is chosen
   from a first pass so that tags switch on and off between images and models, with values above and below 0.9
   and none within 2e-3 of a probability (tag ``t`` is aimed at splitting the two images in case ``t % 3``).

Tensors of the unused Tag2Text parts (``tag_encoder.``, ``text_decoder.``) are stored as name -> shape only and the
derived Swin buffers (``relative_position_index``, ``attn_mask``) as int8/int16: the test rebuilds the complete files.

``tests/data/ram_full_size_shapes.json.gz``: the name -> shape list of the full-size ``RAMLora`` state dict
(``vit='swin_l'``, ``image_size=384``, the checkout's own configs and 4585-tag lists), built on the meta device.

The tokenizer: OSEDiff's ``init_tokenizer`` loads ``bert-base-uncased`` from an absolute path on the authors'
machine (upstream RAM downloads it). Tagging never tokenises (the tokenizer only sizes the tagging head's word
embeddings, which RAM deletes, and a caption prompt), so this tool gives it a BERT tokenizer over a 8-word vocabulary
written to the scratch folder; the rest of ``init_tokenizer`` (adding ``[DEC]`` and ``[ENC]``) runs unchanged.

RAM's code needs transformers < 4.56 (it imports ``apply_chunking_to_forward`` & co. from
``transformers.modeling_utils``), timm (its deprecated ``timm.models.layers`` paths still work in timm 1.0),
fairscale and loralib. With this repository's Python::

    python -m venv --system-site-packages /tmp/ram_env
    /tmp/ram_env/bin/pip install --no-deps loralib==0.1.2 fairscale==0.4.13 transformers==4.55.4 \\
        tokenizers==0.21.4 huggingface_hub==0.36.0 kernels==0.9.0
    /tmp/ram_env/bin/python tools/make_ram_fixture.py --osediff ../OSEDiff

(``kernels==0.9.0`` only because transformers 4.55 imports an installed ``kernels`` package and a newer one needs a
newer huggingface_hub.) A checkout needs only the ``ram/`` folder of cswry/OSEDiff (fcc4f09 was used).
"""
import argparse
import gzip
import io
import json
import os
import sys
import tempfile
from types import SimpleNamespace

import torch

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
DEFAULT_OUT = os.path.join(REPO_ROOT, 'tests', 'data', 'ram_parity.pt.gz')
DEFAULT_SHAPES_OUT = os.path.join(REPO_ROOT, 'tests', 'data', 'ram_full_size_shapes.json.gz')
FORMAT = 'portraitisr.ram_parity/1'
SHAPES_FORMAT = 'portraitisr.ram_full_size_shapes/1'

IMAGE_SIZE = 224  # RAMLora only accepts 224 / 384 / 444; 224 is the smallest
SWIN_CONFIG = dict(image_res=IMAGE_SIZE, vision_width=32, window_size=7, embed_dim=4, depths=[2, 2, 2, 2],
                   num_heads=[1, 2, 2, 4])
BERT_CONFIG = dict(architectures=['BertModel'], attention_probs_dropout_prob=0.1, hidden_act='gelu',
                   hidden_dropout_prob=0.1, hidden_size=16, initializer_range=0.02, intermediate_size=32,
                   layer_norm_eps=1e-12, max_position_embeddings=32, model_type='bert', num_attention_heads=4,
                   num_hidden_layers=2, pad_token_id=0, type_vocab_size=2, vocab_size=16, encoder_width=16,
                   add_cross_attention=True)
TAGS = ['person', 'woman', 'man', 'face', 'hair', 'smile', 'eye', 'portrait', 'shirt', 'glasses', 'beard', 'hat',
        'sky', 'tree', 'building', 'street', 'car', 'dog', 'cat', 'flower', 'water', 'grass', 'light',
        'black and white']
VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'a', 'picture', 'of']
IMAGES_SHAPE = (2, 3, 96, 160)  # non-square, so the squash to 224 x 224 shows
CASES = {'ram': dict(lora=False), 'dape': dict(lora=True),
         'dape_max0.75_add0.05': dict(lora=True, max_threthold=0.75, add_threthold=0.05)}
UNUSED_PREFIXES = ('tag_encoder.', 'text_decoder.')
DERIVED = ('relative_position_index', 'attn_mask')
SEED = 19
MARGIN = 2e-3  # no probability closer than this to its threshold: a 1e-5 logit error cannot flip a tag


def _half_values(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().half().float()


def _randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Random weights at scales that keep activations O(1) and logits spread (probabilities away from 0.5)."""
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied parameters come once
            shape = param.shape
            if 'lora_B' in name and name.startswith(UNUSED_PREFIXES):
                # as in DAPE.pth: the Tag2Text parts' LoRA is never trained (no gradient reaches it), B stays 0
                value = torch.zeros(shape)
            elif 'lora_' in name:
                value = torch.randn(shape, generator=generator) * 0.4  # dW = B A / 8 about 30 % of W
            elif name == 'label_embed':
                value = torch.randn(shape, generator=generator)
            elif name.endswith('relative_position_bias_table'):
                value = torch.randn(shape, generator=generator) * 0.5
            elif name == 'fc.weight':
                value = torch.randn(shape, generator=generator) * 3 / shape[1] ** 0.5
            elif param.dim() == 1 and name.endswith('weight'):  # LayerNorm gains
                value = 1 + 0.1 * torch.randn(shape, generator=generator)
            elif param.dim() == 1:
                value = 0.1 * torch.randn(shape, generator=generator)
            else:
                fan_in = param[0].numel()
                value = torch.randn(shape, generator=generator) / fan_in ** 0.5
            param.copy_(_half_values(value))


def _write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(data, f)


def _effective(value: float, case: dict) -> float:
    """RAMLora's threshold rule (``max_threthold`` 0.9 and ``add_threthold`` 0 unless the case sets them)."""
    high, add = case.get('max_threthold', 0.9), case.get('add_threthold', 0.0)
    return value if value > high else min(value + add, high)


def _choose_thresholds(probabilities: dict) -> list:
    """One 2-decimal threshold per tag (as in the published file). Tag ``t`` is aimed at case ``t % 3``: its
    effective threshold lies between that case's probabilities of the two images, below both or above both (in
    turn), so tags switch on and off between images and cases; no effective threshold lies within MARGIN of any
    probability of any case."""
    names = list(CASES)
    values = []
    for tag in range(len(TAGS)):
        aim = names[tag % len(names)]
        probs = probabilities[aim][:, tag]
        # split the two images, pass both, or stop both, in turn
        target = [float(probs.mean()), float(probs.min()) - 0.03, float(probs.max()) + 0.03][tag // 3 % 3]
        best = None
        for candidate in (c / 100 for c in range(1, 100)):
            if any(abs(_effective(candidate, CASES[n]) - p) <= MARGIN
                   for n in names for p in probabilities[n][:, tag].tolist()):
                continue
            distance = abs(_effective(candidate, CASES[aim]) - target)
            if best is None or distance < best[0]:
                best = (distance, candidate)
        values.append(best[1])
    return values


def make_fixture(checkout: str, work: str) -> tuple:
    """Run OSEDiff's RAM code from ``checkout`` (``work``: scratch) and return (fixture dict, shapes dict)."""
    import transformers

    major, minor = (int(v) for v in transformers.__version__.split('.')[:2])
    if (major, minor) >= (4, 56):
        raise SystemExit(f'transformers {transformers.__version__}: RAM\'s bert_lora.py needs < 4.56 (see --help)')
    checkout = os.path.abspath(checkout)
    if not os.path.isfile(os.path.join(checkout, 'ram', 'models', 'ram_lora.py')):
        raise SystemExit(f'{checkout} is not a cswry/OSEDiff checkout (no ram/models/ram_lora.py)')
    sys.path.insert(0, checkout)
    import torchvision.transforms as T
    from transformers import BertTokenizer

    import ram.models.ram_lora as ram_lora  # noqa: E402  (cswry/OSEDiff, imported at run time, not copied)
    import ram.models.utils as ram_utils  # noqa: E402

    # The tokenizer work-around (module docstring): init_tokenizer's own code runs on a local 8-word vocabulary.
    vocab = os.path.join(work, 'vocab.txt')
    with open(vocab, 'w', encoding='utf-8') as f:
        f.write('\n'.join(VOCAB) + '\n')
    ram_utils.BertTokenizer = SimpleNamespace(from_pretrained=lambda *args, **kwargs: BertTokenizer(vocab))

    # ---- small configuration in a scratch CONFIG_PATH
    config_dir = os.path.join(work, 'ram')
    _write_json(os.path.join(config_dir, 'configs', 'swin', f'config_swinL_{IMAGE_SIZE}.json'), SWIN_CONFIG)
    _write_json(os.path.join(config_dir, 'configs', 'q2l_config.json'), BERT_CONFIG)
    med_config = os.path.join(config_dir, 'configs', 'med_config.json')
    _write_json(med_config, BERT_CONFIG)
    os.makedirs(os.path.join(config_dir, 'data'))
    tag_list = os.path.join(config_dir, 'data', 'ram_tag_list.txt')
    with open(tag_list, 'w', encoding='utf-8') as f:
        f.write('\n'.join(TAGS))  # no final newline, like the published file
    tag_list_chinese = os.path.join(config_dir, 'data', 'ram_tag_list_chinese.txt')
    with open(tag_list_chinese, 'w', encoding='utf-8') as f:
        f.write('\n'.join(f'{t} (zh)' for t in TAGS))
    threshold_file = os.path.join(config_dir, 'data', 'ram_tag_list_threshold.txt')
    ram_lora.CONFIG_PATH = ram_utils.CONFIG_PATH = config_dir
    common = dict(image_size=IMAGE_SIZE, vit='swin_l', med_config=med_config, tag_list=tag_list,
                  tag_list_chinese=tag_list_chinese)

    # ---- the published file layouts, from a randomised RAMLora (train mode: nothing merged)
    generator = torch.Generator().manual_seed(SEED)
    with open(threshold_file, 'w', encoding='utf-8') as f:
        f.write('\n'.join(['0.5'] * len(TAGS)))
    source = ram_lora.RAMLora(**common)
    _randomise(source, generator)
    state = source.state_dict()
    ram_path, dape_path = os.path.join(work, 'ram_swin_large_14m.pth'), os.path.join(work, 'DAPE.pth')
    torch.save({'model': {k: v.clone() for k, v in state.items() if 'lora_' not in k}}, ram_path)
    torch.save({k: v.clone() for k, v in state.items() if 'lora_' in k}, dape_path)  # SeeSR's lora_state_dict
    del source

    # two different images: smoothed noise, and noise over a colour gradient (exact uint8 values)
    noise = torch.randint(0, 256, IMAGES_SHAPE, generator=generator).float()
    smooth = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2, count_include_pad=False)
    images = (noise + 3 * smooth) / 4
    ramp = torch.linspace(0, 255, IMAGES_SHAPE[-1]).view(1, -1) * torch.tensor([1.0, 0.6, 0.2]).view(3, 1, 1)
    images[1] = 0.3 * images[1] + 0.7 * ramp
    images = images.round().clamp(0, 255).to(torch.uint8)
    ram_transforms = T.Compose([T.Resize((IMAGE_SIZE, IMAGE_SIZE), antialias=False),  # test_osediff.py, tv 0.15
                                T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    x = ram_transforms(images.float() / 255)

    def run(case: dict) -> dict:
        kwargs = {k: v for k, v in case.items() if k != 'lora'}
        model = ram_lora.ram(pretrained=ram_path, pretrained_condition=dape_path if case['lora'] else '',
                             **common, **kwargs)
        model.eval()
        with torch.no_grad():
            _, logits, _ = model.condition_forward(x, only_feature=False)
            tags, _ = model.generate_tag(x)
        return dict(logits=logits.float().clone(), tags=list(tags), class_threshold=model.class_threshold.clone())

    # ---- first pass: probabilities, to place the thresholds; second pass: the fixture
    probabilities = {name: torch.sigmoid(run(case)['logits']) for name, case in CASES.items()}
    thresholds = _choose_thresholds(probabilities)
    threshold_text = '\n'.join(f'{v:.2f}' for v in thresholds)
    with open(threshold_file, 'w', encoding='utf-8') as f:
        f.write(threshold_text)
    outputs = {name: run(case) for name, case in CASES.items()}

    ram_file = torch.load(ram_path, weights_only=True)['model']
    dape_file = torch.load(dape_path, weights_only=True)

    def kept(file: dict) -> dict:
        return {k: v.half() for k, v in file.items()
                if not k.startswith(UNUSED_PREFIXES) and k.rsplit('.', 1)[-1] not in DERIVED}

    def shapes(file: dict) -> dict:
        return {k: [list(v.shape), str(v.dtype).replace('torch.', '')] for k, v in file.items()
                if k.startswith(UNUSED_PREFIXES)}

    derived = {}
    for key, value in ram_file.items():
        if key.endswith('relative_position_index'):
            derived[key] = value.to(torch.int16)
        elif key.endswith('attn_mask'):
            derived[key] = value.to(torch.int8)  # 0 / -100
    fixture = dict(
        format=FORMAT,
        note=(f'Made by tools/make_ram_fixture.py from cswry/OSEDiff ram/ (RAMLora) with transformers '
              f'{transformers.__version__}, torch {torch.__version__}'),
        swin=dict(image_size=IMAGE_SIZE, patch_size=4, embed_dim=SWIN_CONFIG['embed_dim'],
                  depths=tuple(SWIN_CONFIG['depths']), num_heads=tuple(SWIN_CONFIG['num_heads']),
                  window_size=SWIN_CONFIG['window_size'], mlp_ratio=4.0),
        head=dict(hidden_size=BERT_CONFIG['hidden_size'], num_layers=BERT_CONFIG['num_hidden_layers'],
                  num_heads=BERT_CONFIG['num_attention_heads'], intermediate_size=BERT_CONFIG['intermediate_size'],
                  layer_norm_eps=BERT_CONFIG['layer_norm_eps']),
        tags=list(TAGS), threshold_file=threshold_text, cases={k: dict(v) for k, v in CASES.items()},
        images=images, ram_model=kept(ram_file), ram_unused=shapes(ram_file), derived_buffers=derived,
        dape=kept(dape_file), dape_unused=shapes(dape_file), outputs=outputs)

    # ---- full size, on the meta device, with the checkout's own configs and tag lists
    ram_lora.CONFIG_PATH = ram_utils.CONFIG_PATH = os.path.join(checkout, 'ram')
    data = os.path.join(checkout, 'ram', 'data')
    linspace = torch.linspace  # Swin's stochastic-depth rates call .item(), which a meta tensor cannot answer
    torch.linspace = lambda *args, **kwargs: linspace(*args, **{**kwargs, 'device': 'cpu'})
    try:
        with torch.device('meta'):
            full = ram_lora.RAMLora(image_size=384, vit='swin_l',
                                    med_config=os.path.join(checkout, 'ram', 'configs', 'med_config.json'),
                                    tag_list=os.path.join(data, 'ram_tag_list.txt'),
                                    tag_list_chinese=os.path.join(data, 'ram_tag_list_chinese.txt'))
    finally:
        torch.linspace = linspace
    full_shapes = dict(format=SHAPES_FORMAT, note=fixture['note'] + ', meta device, vit=swin_l, image_size=384',
                       state_dict={k: list(v.shape) for k, v in full.state_dict().items()})
    return fixture, full_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--osediff', required=True, help='a checkout of cswry/OSEDiff (its ram/ folder is used)')
    parser.add_argument('--out', default=DEFAULT_OUT)
    parser.add_argument('--shapes-out', default=DEFAULT_SHAPES_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic reductions
    with tempfile.TemporaryDirectory() as work:
        fixture, full_shapes = make_fixture(args.osediff, work)
    buffer = io.BytesIO()
    torch.save(fixture, buffer)
    with open(args.out, 'wb') as f:
        f.write(gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))
    with open(args.shapes_out, 'wb') as f:
        f.write(gzip.compress(json.dumps(full_shapes, sort_keys=True).encode('utf-8'), compresslevel=9, mtime=0))
    for name, out in fixture['outputs'].items():
        print(f'{name}: tags {out["tags"]}')
    print(f'wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KB) and {args.shapes_out} '
          f'({os.path.getsize(args.shapes_out) / 1024:.0f} KB, {len(full_shapes["state_dict"])} tensors)')


if __name__ == '__main__':
    main()
