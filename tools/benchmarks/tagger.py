"""Tagging time of RAM / DAPE per 512 x 512 image at full size, and its share of an OSEDiff restore.

Builds ``DAPETagger`` (Swin-L 384, the 2-layer tagging head, 4585 tags, LoRA of rank 8 with non-zero ``lora_B``)
with random weights: time does not depend on the values, and no weight file is needed. It times, per image:

* ``tag``: ``tagger(images)`` on ``B x 3 x 512 x 512`` in [0, 1] (squash to 384, normalise, encoder, head,
  thresholds), the whole cost of getting the tags of an LQ;
* ``swin`` and ``head``: the image encoder (with ``image_proj``) and the tagging head alone, on the preprocessed
  input;
* with ``--restore``: OSEDiff's restore at 512 on the SD 2.1-base architecture with random weights
  (``tools/benchmark.py``'s model; the LoRA-merged fast path in ``--restore-dtype``, fixed prompt, AdaIN colour
  fix), and the CLIP text encoder on one new prompt of 20 tags: a tagged image has a prompt of its own, so its
  prompt is encoded once per image rather than cached.

Each measurement keeps the fastest of ``--repeats`` calls after one warm-up (the CPU machines are shared; on CUDA
the median). The share is ``tag / (tag + new prompt + restore)``.

    python tools/benchmarks/tagger.py                                   # CPU, tagger only
    python tools/benchmarks/tagger.py --restore                         # CPU, with the restore (about 10 GB RAM)
    python tools/benchmarks/tagger.py --device cuda --dtype float16 --restore --restore-dtype bfloat16 --batch 4
"""
import argparse
import os
import statistics
import sys
import time

import torch

TOOLS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(TOOLS_DIR))
sys.path.insert(0, TOOLS_DIR)

from portraitisr.models.taggers import DAPETagger, RAMTagger  # noqa: E402

SIZE = 512
NUM_TAGS = 4585  # RAM's tag list


def timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds of one call: fastest of ``repeats`` (CPU) or median (CUDA), after one warm-up call."""
    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
    with torch.no_grad():
        fn()
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return min(times) if device.type == 'cpu' else statistics.median(times)


def build_tagger(lora: bool, device: torch.device, dtype: torch.dtype) -> RAMTagger:
    torch.manual_seed(0)
    cls = DAPETagger if lora else RAMTagger
    tagger = cls(pretrained=False, tag_list=[f'tag {i}' for i in range(NUM_TAGS)], thresholds=0.68)
    with torch.no_grad():
        for name, param in tagger.named_parameters():
            if name.endswith('lora_B'):  # as after training: the LoRA update is computed, not skipped
                param.normal_(std=0.01)
    return tagger.to(device=device, dtype=dtype)


def bench_tagger(args, device: torch.device) -> dict:
    dtype = getattr(torch, args.dtype)
    tagger = build_tagger(not args.ram, device, dtype)
    images = torch.rand(args.batch, 3, SIZE, SIZE, device=device)
    x = tagger.preprocess(images)
    embeds = tagger.image_embeds(x)
    queries = torch.relu(tagger.wordvec_proj(tagger.label_embed)).unsqueeze(0).expand(args.batch, -1, -1)
    row = dict(tag=timed(lambda: tagger(images), device, args.repeats) / args.batch,
               swin=timed(lambda: tagger.image_embeds(x), device, args.repeats) / args.batch,
               head=timed(lambda: tagger.tagging_head(queries, embeds), device, args.repeats) / args.batch,
               params=sum(p.numel() for p in tagger.parameters()) / 1e6)
    return row


def bench_restore(args, device: torch.device) -> dict:
    from benchmark import build_osediff, restore_fn  # tools/benchmark.py: OSEDiff on SD 2.1-base, random weights

    model = build_osediff(tiny=False)
    model.enable_fast_inference(args.restore_dtype, device=device)
    restore = timed(restore_fn(model, SIZE, args.batch, device), device, args.repeats) / args.batch
    encoder = model.text_encoder.to(device)
    prompt = ', '.join(f'tag{i}' for i in range(20)) + ', ,'  # OSEDiff's f"{tags}, {prompt}," with 20 tags
    new_prompt = timed(lambda: encoder.encode([prompt]), device, args.repeats)
    return dict(restore=restore, new_prompt=new_prompt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='float32', help='tagger dtype (OSEDiff runs DAPE in float16 on GPU)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--ram', action='store_true', help='plain RAM (no LoRA) instead of DAPE')
    parser.add_argument('--restore', action='store_true', help='also time the OSEDiff restore at 512')
    parser.add_argument('--restore-dtype', default='float32', help='dtype of the merged restore path')
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = f'CPU, {torch.get_num_threads()} threads'
    print(f'Device: {name}, torch {torch.__version__}; {"RAM" if args.ram else "DAPE"} {args.dtype}, '
          f'batch {args.batch}, {SIZE} x {SIZE} inputs, random weights')
    row = bench_tagger(args, device)
    print(f'tagger: {row["params"]:.1f} M parameters')
    print('| part | seconds per image |\n|---|---|')
    for key, label in (('tag', 'tagging (preprocess + Swin-L + head + thresholds)'), ('swin', '  Swin-L + image_proj'),
                       ('head', '  tagging head (4585 queries)')):
        print(f'| {label} | {row[key]:.3f} |')
    if args.restore:
        row.update(bench_restore(args, device))
        print(f'| OSEDiff restore 512 (merged {args.restore_dtype}, cached prompt) | {row["restore"]:.3f} |')
        print(f'| CLIP text encoder, one new prompt | {row["new_prompt"]:.3f} |')
        total = row['tag'] + row['new_prompt'] + row['restore']
        print(f'\ntagging is {100 * row["tag"] / total:.1f} % of a tagged restore '
              f'({row["tag"]:.3f} s of {total:.3f} s; the new prompt adds {100 * row["new_prompt"] / total:.1f} %)')


if __name__ == '__main__':
    main()
