"""The blending baseline: a general SR model for the whole photo, a face restorer pasted back on each face.

This is the "crop - restore - paste" paradigm of CodeFormer's and GFPGAN's inference scripts (HeadsUp paper,
Tables 1-3, "blending": Real-ESRGAN + CodeFormer, OSEDiff + OSEDiff_Face). Per image:

1. the general restorer upscales the LQ by ``upscale`` (tiled when the restorer is configured so; an output of
   another size is resized bicubically to ``upscale x`` the input);
2. faces are detected on that output (``detect_on='upscaled'``) or on the LQ with the landmarks mapped to output
   pixels (``detect_on='input'``);
3. each face is aligned to the face restorer's template crop (FFHQ-512 by default), cut from the general output
   (``crop_from='upscaled'``) or from the LQ (``crop_from='input'``, as facexlib's ``FaceRestoreHelper`` does);
4. the face restorer restores the crops;
5. each restored face and its soft square mask are warped back with the inverse similarity and alpha-blended into
   the output, smaller faces first so that bigger faces win where they overlap.

The soft mask follows facexlib ``FaceRestoreHelper.paste_faces_to_input_image`` (xinntao/facexlib
``facexlib/utils/face_restoration_helper.py``, ``use_parse=False`` branch):
``warpAffine(ones(face), inv)``, eroded by ``int(2 s)`` (s = output / input scale), the face multiplied by that
hard mask; ``w_edge = int(sqrt(mask.sum())) // 20``; eroded again by ``2 w_edge`` and
``GaussianBlur(2 w_edge + 1, sigma=0)``. The maths run on a region around each face's footprint, which gives the
same mask as the whole image (the margin covers the erosion and the blur) at a fraction of the cost.
"""
from __future__ import annotations

import logging
import math
from typing import List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine
from mmengine.logging import print_log
from mmengine.model import BaseDataPreprocessor, BaseModel
from torch import Tensor, nn

from portraitisr.degradations import build_degradation
from portraitisr.face.alignment.face_aligner import invert_affine
from portraitisr.registry import FACE_ALIGNERS, FACE_DETECTORS, MODELS, RESTORERS
from .one_step_restorer import pack_outputs

__all__ = ['BlendingRestorer', 'BlendingDataPreprocessor']


def _stack(images) -> Tensor:
    return images if isinstance(images, Tensor) else torch.stack(list(images))


@MODELS.register_module()
class BlendingDataPreprocessor(BaseDataPreprocessor):
    """Collated batch -> ``{'inputs': lq, 'gt': gt, 'metainfo': [...]}`` with the LQ at its **native** size.

    Unlike :class:`SRDataPreprocessor` (which enlarges the LQ to the GT size for one-step SD models), the blending
    baselines take the LQ as it is: their general restorer does the upscaling. Batches without ``lq`` get one
    from ``gt``: with ``degradation`` (a preset name or config, as in ``SRDataPreprocessor``, re-seeded from
    ``eval_seed`` and the sample index in evaluation), or else by antialiased bicubic downscaling by ``scale``.

    Args:
        scale: GT size / LQ size of the bicubic downscaling (GT sides must be multiples of it).
        degradation: optional ``DEGRADATIONS`` preset / config producing ``lq`` smaller by ``scale``.
        eval_seed: seed of the degradation in evaluation.

    Images: ``B x 3 x H x W`` float32 RGB in [0, 1] (``lq``: ``H / scale x W / scale``).
    """

    def __init__(self, scale: int = 4, degradation: Union[str, dict, None] = None, eval_seed: int = 0) -> None:
        super().__init__()
        self.scale = int(scale)
        self.eval_seed = int(eval_seed)
        self.degradation = None
        if degradation is not None:
            self.degradation = build_degradation(degradation, seed=torch.initial_seed() % 2**31)

    def _make_lq(self, gt: Tensor, metainfo: List[dict]) -> Tensor:
        if self.degradation is not None:
            saved = self.degradation.get_rng_state()
            self.degradation.manual_seed(self.eval_seed + int(metainfo[0].get('index', 0)))
            try:
                return self.degradation(gt)['lq']
            finally:
                self.degradation.set_rng_state(saved)
        height, width = gt.shape[-2:]
        if height % self.scale or width % self.scale:
            raise ValueError(f'GT size {height}x{width} is not a multiple of scale={self.scale}')
        lq = F.interpolate(gt, size=(height // self.scale, width // self.scale), mode='bicubic',
                           align_corners=False, antialias=True)
        return lq.clamp(0, 1)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        gt = _stack(data['gt']).float() if data.get('gt') is not None else None
        lq = _stack(data['lq']).float() if data.get('lq') is not None else None
        if gt is None and lq is None:
            raise KeyError('A batch needs `gt` or `lq` images')
        batch_size = (lq if lq is not None else gt).shape[0]
        metainfo = data.get('metainfo')
        if metainfo is None:
            metainfo = [{} for _ in range(batch_size)]
        elif isinstance(metainfo, dict):  # collated as a dict of lists
            metainfo = [{key: values[i] for key, values in metainfo.items()} for i in range(batch_size)]
        else:
            metainfo = list(metainfo)
        if lq is None:
            lq = self._make_lq(gt, metainfo)
        return dict(inputs=lq, gt=gt, metainfo=metainfo)


@MODELS.register_module()
class BlendingRestorer(BaseModel):
    """General SR of the whole photo + a face restorer pasted back on every detected face (inference only).

    Args:
        general_restorer: ``RESTORERS`` config of the whole-image model (``scale`` 2 or 4, e.g. Real-ESRGAN).
        face_restorer: ``RESTORERS`` config of the face model (``face_size`` set, ``scale`` 1, e.g. CodeFormer).
        face_detector: ``FACE_DETECTORS`` config (RetinaFace, dlib).
        face_aligner: ``FACE_ALIGNERS`` config; default FFHQ-512 template at the face restorer's ``face_size``
            (facexlib's ``FaceRestoreHelper``).
        upscale: output size / input size; default the general restorer's ``scale``. If the general restorer's
            output has another size, it is resized bicubically to ``upscale x`` the input.
        detect_on: ``'upscaled'`` (detect on the general SR output) or ``'input'`` (on the LQ; landmarks mapped
            to output pixels by ``(p + 0.5) * upscale - 0.5``).
        crop_from: ``'upscaled'`` (align the faces out of the general SR output) or ``'input'`` (out of the LQ,
            as facexlib / CodeFormer's script do).
        min_eye_distance: faces whose eye distance in **output** pixels is below it are skipped.
        max_faces: restore at most this many faces per image, the largest (by eye distance) first.
        data_preprocessor: default :class:`BlendingDataPreprocessor` (LQ at its native size).

    ``val_step`` / ``test_step`` return one ``dict(pred, lq, gt, metainfo)`` per image (CPU tensors, ``pred``
    ``3 x (upscale H) x (upscale W)`` in [0, 1]); the metainfo gains ``paste_mask`` (``1 x H' x W'`` float in
    [0, 1], the soft union ``1 - prod(1 - m_i)`` of the faces' soft masks ``m_i``: the weight the pasted faces
    got) and ``faces_landmarks`` (``N x 5 x 2`` float32 in output pixels, largest face first), so that boundary
    (seam) metrics can find where the faces were pasted.
    """

    def __init__(self,
                 general_restorer: Union[dict, nn.Module],
                 face_restorer: Union[dict, nn.Module],
                 face_detector: Union[dict, nn.Module],
                 face_aligner: Union[dict, nn.Module, None] = None,
                 upscale: Optional[int] = None,
                 detect_on: str = 'upscaled',
                 crop_from: str = 'upscaled',
                 min_eye_distance: float = 0.0,
                 max_faces: Optional[int] = None,
                 data_preprocessor: Union[dict, nn.Module, None] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if not isinstance(data_preprocessor, nn.Module):
            data_preprocessor = MODELS.build(data_preprocessor or dict(type='BlendingDataPreprocessor'))
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if detect_on not in ('upscaled', 'input'):
            raise ValueError(f"detect_on must be 'upscaled' or 'input', got {detect_on!r}")
        if crop_from not in ('upscaled', 'input'):
            raise ValueError(f"crop_from must be 'upscaled' or 'input', got {crop_from!r}")
        if max_faces is not None and max_faces < 0:
            raise ValueError(f'max_faces must be >= 0 or None, got {max_faces}')
        self.general_restorer = _build(RESTORERS, general_restorer)
        self.face_restorer = _build(RESTORERS, face_restorer)
        face_size = getattr(self.face_restorer, 'face_size', None)
        if face_size is None:
            raise ValueError(f'{type(self.face_restorer).__name__} is not a face restorer (face_size is None)')
        self.face_detector = _build(FACE_DETECTORS, face_detector)
        self.face_aligner = _build(FACE_ALIGNERS, face_aligner or dict(type='FaceAligner', template='ffhq512',
                                                                         output_size=face_size))
        if tuple(self.face_aligner.crop_size) != (face_size, face_size):
            raise ValueError(f'the aligner crops {self.face_aligner.crop_size}, the face restorer expects '
                             f'{face_size}x{face_size}')
        self.upscale = int(upscale if upscale is not None else self.general_restorer.scale)
        if self.upscale < 1:
            raise ValueError(f'upscale must be >= 1, got {self.upscale}')
        self.detect_on, self.crop_from = detect_on, crop_from
        self.min_eye_distance = float(min_eye_distance)
        self.max_faces = max_faces

    # ------------------------------------------------------------------ steps
    def general_sr(self, lq: Tensor) -> Tensor:
        """``B x 3 x H x W`` in [0, 1] -> ``B x 3 x (upscale H) x (upscale W)`` in [0, 1]."""
        out = self.general_restorer(lq)
        size = (lq.shape[-2] * self.upscale, lq.shape[-1] * self.upscale)
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode='bicubic', align_corners=False).clamp(0, 1)
        return out

    def detect_landmarks(self, lq: Tensor, upscaled: Tensor) -> List[np.ndarray]:
        """Per image, the kept faces' ``N x 5 x 2`` landmarks in output pixels, largest (eye distance) first."""
        if self.detect_on == 'upscaled':
            found = [d.landmarks.astype(np.float64) for d in self.face_detector.detect(upscaled)]
        else:
            found = [(d.landmarks.astype(np.float64) + 0.5) * self.upscale - 0.5
                     for d in self.face_detector.detect(lq)]
        kept = []
        for landmarks in found:
            eye = np.linalg.norm(landmarks[:, 0] - landmarks[:, 1], axis=-1) if len(landmarks) else np.zeros(0)
            order = [i for i in np.argsort(-eye, kind='stable') if eye[i] >= self.min_eye_distance]
            if self.max_faces is not None:
                order = order[:self.max_faces]
            kept.append(landmarks[order].reshape(-1, 5, 2))
        return kept

    def _crop_matrices(self, matrices: Tensor) -> Tensor:
        """Output-pixel -> crop matrices (``N x 2 x 3``) turned into those of the image the faces are cut from."""
        if self.crop_from == 'upscaled' or self.upscale == 1:
            return matrices
        # output pixel = s * input pixel + (s - 1) / 2 (pixel centres), composed into the matrices
        s = float(self.upscale)
        out = matrices.clone()
        out[:, :, :2] = matrices[:, :, :2] * s
        out[:, :, 2] = matrices[:, :, 2] + matrices[:, :, :2].sum(-1) * (s - 1) / 2
        return out

    def paste(self, image: Tensor, faces: Tensor, matrices: Tensor) -> tuple[Tensor, Tensor]:
        """Blend restored faces into one image, in the given order (later faces win).

        Args:
            image: ``3 x H x W`` in [0, 1], the general SR output.
            faces: ``N x 3 x h x w`` restored crops in [0, 1].
            matrices: ``N x 2 x 3`` output-pixel -> crop matrices (float64).

        Returns:
            ``(blended 3 x H x W, paste mask 1 x H x W)``. The mask is the soft union ``1 - prod(1 - m_i)`` of
            the faces' soft masks ``m_i``: the total weight the pasted faces got, so that where every face is
            one colour ``c`` the result is exactly ``mask * c + (1 - mask) * image``.
        """
        out = image.clone()
        union = image.new_zeros(1, *image.shape[-2:])
        height, width = image.shape[-2:]
        face_h, face_w = faces.shape[-2:]
        inverse = invert_affine(matrices.to(torch.float64))
        erode = int(2 * self.upscale)
        for i in range(faces.shape[0]):
            inv = inverse[i:i + 1].clone()
            # the footprint's bounding box, with a margin for the erosion and blur, clipped to the image
            corners = torch.tensor([[0, 0, 1], [face_w - 1, 0, 1], [0, face_h - 1, 1], [face_w - 1, face_h - 1, 1]],
                                   dtype=torch.float64, device=inv.device)
            xy = corners @ inv[0].T
            area = abs(float(torch.linalg.det(inv[0, :, :2]))) * face_h * face_w
            margin = int(math.sqrt(area)) // 20 + erode + 4
            x0 = max(int(math.floor(float(xy[:, 0].min()))) - margin, 0)
            y0 = max(int(math.floor(float(xy[:, 1].min()))) - margin, 0)
            x1 = min(int(math.ceil(float(xy[:, 0].max()))) + margin + 1, width)
            y1 = min(int(math.ceil(float(xy[:, 1].max()))) + margin + 1, height)
            if x1 <= x0 or y1 <= y0:
                continue  # the face lies outside the image
            inv[0, 0, 2] -= x0
            inv[0, 1, 2] -= y0
            inv = inv.to(torch.float32)
            size = (y1 - y0, x1 - x0)
            soft, hard = self.face_aligner.square_mask_of_face(inv, (face_h, face_w), size, self.upscale)
            warped = warp_affine(faces[i:i + 1].float(), inv, dsize=size, mode='bilinear', padding_mode='zeros',
                                 align_corners=True)
            soft, pasted = soft[0].to(image.dtype), (hard * warped)[0].to(image.dtype)
            region = out[:, y0:y1, x0:x1]
            out[:, y0:y1, x0:x1] = soft * pasted + (1 - soft) * region
            union[:, y0:y1, x0:x1] = 1 - (1 - union[:, y0:y1, x0:x1]) * (1 - soft)
        return out, union

    @torch.no_grad()
    def restore_with_masks(self, lq: Tensor) -> tuple[Tensor, List[Tensor], List[Tensor]]:
        """Restore a batch and keep what was pasted.

        Args:
            lq: ``B x 3 x H x W`` RGB in [0, 1] at the native input size.

        Returns:
            ``(sr, paste_masks, landmarks)``: ``sr`` ``B x 3 x (upscale H) x (upscale W)`` in [0, 1]; per image a
            ``1 x H' x W'`` paste mask in [0, 1] and the pasted faces' ``N x 5 x 2`` float32 landmarks (output
            pixels, largest first).
        """
        if lq.ndim != 4 or lq.shape[1] != 3:
            raise ValueError(f'BlendingRestorer expects B x 3 x H x W RGB, got {tuple(lq.shape)}')
        upscaled = self.general_sr(lq)
        results, masks, all_landmarks = [], [], []
        for b, landmarks in enumerate(self.detect_landmarks(lq, upscaled)):
            landmarks_t = torch.from_numpy(np.ascontiguousarray(landmarks, np.float32))
            if len(landmarks) == 0:
                print_log(f'BlendingRestorer: no face found in image {b}; returning the general SR result',
                          logger='current', level=logging.DEBUG)
                results.append(upscaled[b])
                masks.append(upscaled.new_zeros(1, *upscaled.shape[-2:]))
                all_landmarks.append(landmarks_t)
                continue
            matrices = self.face_aligner.estimate(landmarks).to(upscaled.device)  # output px -> crop, float64
            source = upscaled[b:b + 1] if self.crop_from == 'upscaled' else lq[b:b + 1]
            crops = self.face_aligner.align(source, self._crop_matrices(matrices),
                                            image_index=torch.zeros(len(landmarks), dtype=torch.long))
            restored = self.face_restorer(crops.clamp(0, 1))
            # paste the smallest first so that the biggest faces win where faces overlap
            order = torch.arange(len(landmarks) - 1, -1, -1)
            image, mask = self.paste(upscaled[b], restored[order], matrices[order])
            results.append(image)
            masks.append(mask)
            all_landmarks.append(landmarks_t)
        return torch.stack(results).clamp(0, 1), masks, all_landmarks

    def restore(self, lq: Tensor) -> Tensor:
        """``B x 3 x H x W`` in [0, 1] -> ``B x 3 x (upscale H) x (upscale W)`` in [0, 1]."""
        return self.restore_with_masks(lq)[0]

    # ------------------------------------------------------------------ mmengine plumbing
    def _predict(self, data: dict) -> List[dict]:
        sr, masks, landmarks = self.restore_with_masks(data['inputs'])
        extra = [dict(paste_mask=mask.float().cpu(), faces_landmarks=points) for mask, points in zip(masks, landmarks)]
        return pack_outputs(sr, data, extra)

    def val_step(self, data: Union[dict, tuple, list]) -> List[dict]:
        return self._predict(self.data_preprocessor(data, False))

    def test_step(self, data: Union[dict, tuple, list]) -> List[dict]:
        return self._predict(self.data_preprocessor(data, False))

    def train_step(self, data, optim_wrapper) -> dict:
        raise RuntimeError('BlendingRestorer is an inference-only baseline (a pretrained general SR model and a '
                           'pretrained face restorer); it has nothing to train. Use tools/test.py, or train the '
                           'component models separately.')

    def forward(self, inputs: Tensor, data_samples: Optional[list] = None, mode: str = 'tensor'):
        """``mode='tensor'`` / ``'predict'``: restored images ``B x 3 x (upscale H) x (upscale W)`` in [0, 1]
        from ``inputs`` ``B x 3 x H x W`` in [0, 1] (native LQ size)."""
        if mode in ('tensor', 'predict'):
            return self.restore(inputs)
        raise ValueError(f'BlendingRestorer.forward supports mode="tensor"/"predict", got {mode!r}; the baseline '
                         'is not trained')


def _build(registry, cfg: Union[dict, nn.Module]) -> nn.Module:
    return cfg if isinstance(cfg, nn.Module) else registry.build(cfg)
