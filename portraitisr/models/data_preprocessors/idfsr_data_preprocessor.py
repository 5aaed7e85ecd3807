"""Batches for IDFSR: LR, GT, the same-identity reference, and both faces' landmarks."""
from typing import List

import torch
from torch import Tensor

from portraitisr.registry import MODELS
from .portrait_data_preprocessor import stack_landmarks, stack_references
from .sr_data_preprocessor import SRDataPreprocessor


def stack_points(metainfo: List[dict], key: str, device) -> Tensor:
    """``metainfo[i][key]`` (``5 x 2`` each, required) -> ``B x 5 x 2`` float32."""
    points = []
    for i, info in enumerate(metainfo):
        value = info.get(key)
        if value is None:
            raise KeyError(f'sample {info.get("path", i)} has no {key!r}: IDFSR needs the landmarks of the LR face '
                           'and of its reference (IdentityFaceDataset provides them)')
        value = torch.as_tensor(value, dtype=torch.float32, device=device)
        if value.shape != (5, 2):
            raise ValueError(f'{key} of sample {info.get("path", i)} must be 5 x 2, got {tuple(value.shape)}')
        points.append(value)
    return torch.stack(points)


@MODELS.register_module()
class IDFSRDataPreprocessor(SRDataPreprocessor):
    """:class:`SRDataPreprocessor` (``inputs``: the LR upscaled bicubically to the GT size) plus

    - ``ref``: ``B x 3 x S x S`` same-identity references in [0, 1] (None when the batch has none);
    - ``face_landmarks``: ``B x 5 x 2`` landmarks of the LR face, in GT (= upscaled LR) pixels;
    - ``ref_landmarks``: ``B x 5 x 2`` landmarks of the references, in reference pixels (None without refs);
    - ``identity``: the identity name of each sample (``metainfo['identity']``, or None).
    """

    def forward(self, data: dict, training: bool = False) -> dict:
        out = super().forward(data, training)
        batch, device = out['inputs'].shape[0], out['inputs'].device
        out['ref'], has_ref = stack_references(data.get('ref'), batch, device)
        if out['ref'] is not None and not bool(has_ref.all()):
            raise ValueError('IDFSR batches need a reference for every sample or for none')
        landmarks, has_face = stack_landmarks(out['metainfo'], device)
        if not bool(has_face.all()):
            raise KeyError('every IDFSR sample needs face_landmarks (the LR face to mask and to warp onto)')
        out['face_landmarks'] = landmarks
        out['ref_landmarks'] = stack_points(out['metainfo'], 'ref_landmarks', device) if out['ref'] is not None \
            else None
        out['identity'] = [info.get('identity') for info in out['metainfo']]
        return out
