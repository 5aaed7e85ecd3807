"""Super-resolution batches plus what HeadsUp needs: reference faces and GT face landmarks."""
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from portraitisr.registry import MODELS
from .sr_data_preprocessor import SRDataPreprocessor


def stack_references(refs: Optional[Sequence[Optional[Tensor]]], batch_size: int,
                     device) -> tuple:
    """Per-sample references (``3 x S x S`` or None) -> ``(B x 3 x S x S zeros where missing, (B,) bool)``.

    Returns ``(None, all-False)`` when no sample of the batch has a reference.
    """
    has_ref = torch.zeros(batch_size, dtype=torch.bool, device=device)
    if refs is None:
        return None, has_ref
    refs = list(refs)
    if len(refs) != batch_size:
        raise ValueError(f'{len(refs)} references for a batch of {batch_size} images')
    present = [r for r in refs if r is not None]
    if not present:
        return None, has_ref
    shapes = {tuple(r.shape) for r in present}
    if len(shapes) > 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[0] != 3:
        raise ValueError(f'references of one batch must be 3 x S x S of one size, got {sorted(shapes)}: '
                         'give every dataset of the mixture the same `ref_size`')
    template = present[0]
    stacked = torch.stack([(r if r is not None else torch.zeros_like(template)).to(device).float()
                           for r in refs])
    has_ref = torch.tensor([r is not None for r in refs], dtype=torch.bool, device=device)
    return stacked, has_ref


def stack_landmarks(metainfo: List[dict], device) -> tuple:
    """``metainfo[i]['face_landmarks']`` (``5 x 2`` or None) -> ``(B x 5 x 2, (B,) bool)``."""
    landmarks = torch.zeros(len(metainfo), 5, 2, dtype=torch.float32, device=device)
    has_face = torch.zeros(len(metainfo), dtype=torch.bool, device=device)
    for i, info in enumerate(metainfo):
        points = info.get('face_landmarks')
        if points is None:
            continue
        points = torch.as_tensor(points, dtype=torch.float32, device=device)
        if points.shape != (5, 2):
            raise ValueError(f'face_landmarks of sample {info.get("path", i)} must be 5 x 2, '
                             f'got {tuple(points.shape)}')
        landmarks[i], has_face[i] = points, True
    return landmarks, has_face


@MODELS.register_module()
class PortraitDataPreprocessor(SRDataPreprocessor):
    """:class:`SRDataPreprocessor` plus the HeadsUp triplet: reference face and GT face landmarks.

    Besides ``inputs``, ``gt`` and ``metainfo`` the output has

    - ``ref``: ``B x 3 x S x S`` aligned reference faces in [0, 1] (zeros where a sample has none),
      or None when no sample of the batch has one;
    - ``has_ref``: ``(B,)`` bool;
    - ``face_landmarks``: ``B x 5 x 2`` GT face landmarks in pixels of the GT (zeros where none);
    - ``has_face``: ``(B,)`` bool.

    Batches may mix datasets (``portrait_collate``): samples without the keys have no face or
    no reference. The degradation does not move pixels (the LQ is upscaled back to the GT size),
    so the GT landmarks locate the face in the LQ as well.
    """

    def forward(self, data: dict, training: bool = False) -> dict:
        out = super().forward(data, training)
        batch_size = out['inputs'].shape[0]
        device = out['inputs'].device
        out['ref'], out['has_ref'] = stack_references(data.get('ref'), batch_size, device)
        out['face_landmarks'], out['has_face'] = stack_landmarks(out['metainfo'], device)
        return out
