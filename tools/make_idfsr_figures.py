"""Draw the pictures of docs/idfsr.md from real photos: what IDFSR's plug-ins make of an LR face and a reference.

1. ``idfsr_conditions.jpg`` (256 px panels): the reference (the astronaut photo mirrored, turned, scaled and
   shifted: the only second view of a person that ships offline is a made one), the reference warped onto the LR face
   (piecewise affine with border anchors, appendix E.1), the x16 LR (bicubic, shown upscaled), the LR with its face
   masked (section 3.1) and the GT.
2. ``idfsr_tiny_output.jpg`` (with ``--checkpoint``): the tiny debug model (configs/debug/idfsr_tiny.py, 64 px)
   restoring the x8 LR of both photos with DDIM-20: masked LR, warped reference, output, GT; with ``--identity`` a
   second output row uses a fitted identity. A 200-step CPU model shows the path, not the paper's quality.

    python tools/make_idfsr_figures.py [--checkpoint work_dirs/idfsr_tiny/iter_200.pth] [--identity person.safetensors]
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from portraitisr.models.conditioning import FaceRegionMasker, ReferenceWarper  # noqa: E402
from portraitisr.registry import DATASETS  # noqa: E402

OUT_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'docs', 'images')


def _image(tensor: torch.Tensor, size: int) -> Image.Image:
    array = (tensor.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize((size, size), Image.NEAREST if array.shape[0] < size else Image.LANCZOS)


def _strip(rows, labels, size: int, path: str) -> None:
    """A grid of ``rows`` (lists of 3 x H x W tensors) with a caption line above each column."""
    caption = 16
    canvas = Image.new('RGB', (size * len(labels), (size + caption) * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = r * (size + caption)
        for c, (tensor, label) in enumerate(zip(row, labels)):
            draw.text((c * size + 4, top + 2), label, fill=(0, 0, 0))
            canvas.paste(_image(tensor, size), (c * size, top + caption))
    canvas.save(path, quality=82, optimize=True)
    print(f'wrote {path} ({os.path.getsize(path) // 1024} KB)')


def conditions_figure(out_dir: str, size: int = 256, scale: int = 16) -> None:
    dataset = DATASETS.build(dict(type='IdentityFaceDataset', manifest='sample://portraits', size=size, scale=scale,
                                  ref_choice='next'))
    item = dataset[0]
    # the reference: the same photo mirrored, turned by 15 degrees, scaled by 0.85 and shifted (a second view)
    angle, s, c = np.deg2rad(15), 0.85, (size - 1) / 2
    rot = s * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    jitter = np.eye(3)
    jitter[:2, :2], jitter[:2, 2] = rot, [c, c] - rot @ [c, c] + [0.08 * size, -0.04 * size]
    ref, ref_points = dataset.aligned_face(dataset.records[0], jitter)
    ref = ref.flip(-1)[None]
    ref_points = torch.from_numpy(np.stack([size - 1 - ref_points[:, 0], ref_points[:, 1]], -1)[[1, 0, 2, 4, 3]])
    ref_points = ref_points.float()[None]
    gt, points = item['gt'][None], item['metainfo']['face_landmarks'][None]
    lr = F.interpolate(item['lq'][None], size=(size, size), mode='bicubic', align_corners=False).clamp(0, 1)
    warped = ReferenceWarper(transform='piecewise_affine', anchors='border')(ref, ref_points, points)
    masked, _ = FaceRegionMasker()(lr, points)
    _strip([[ref[0], warped[0], lr[0], masked[0], gt[0]]],
           ['reference', 'warped reference', f'LR x{scale}', 'masked LR', 'GT'], size,
           osp.join(out_dir, 'idfsr_conditions.jpg'))


def output_figure(out_dir: str, config: str, checkpoint: str, identity: str = None, panel: int = 128) -> None:
    from mmengine.registry import init_default_scope

    from portraitisr.registry import MODELS

    cfg = Config.fromfile(config)
    init_default_scope('portraitisr')
    model = MODELS.build(dict(cfg.model.to_dict(), init_weights=None))
    model.load_checkpoint(checkpoint)
    model.eval()
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    items = [dataset[i] for i in range(len(dataset))]
    data = model.data_preprocessor(pseudo_collate(items), False)
    cond = model.conditions(data['inputs'], data['face_landmarks'], data['ref'], data['ref_landmarks'])
    rows = []
    outputs = [('output (reference ID)', None)]
    if identity:
        outputs.append(('output (fitted ID)', identity))
    restored = []
    for _, fitted in outputs:
        model.set_identity(fitted)
        restored.append(model.restore(data['inputs'], data['ref'], data['face_landmarks'], data['ref_landmarks']))
    model.set_identity(None)
    for i in range(len(items)):
        rows.append([cond['masked_lr'][i], cond['warped'][i]] + [r[i] for r in restored] + [data['gt'][i]])
    labels = ['masked LR', 'warped ref'] + [label for label, _ in outputs] + ['GT']
    _strip(rows, labels, panel, osp.join(out_dir, 'idfsr_tiny_output.jpg'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out-dir', default=OUT_DIR)
    parser.add_argument('--config', default='configs/debug/idfsr_tiny.py')
    parser.add_argument('--checkpoint', help='a tiny-config checkpoint for the output figure')
    parser.add_argument('--identity', help='a fitted identity (tools/fit_identity.py) for a second output column')
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(0)
    conditions_figure(args.out_dir)
    if args.checkpoint:
        output_figure(args.out_dir, args.config, args.checkpoint, args.identity)


if __name__ == '__main__':
    main()
