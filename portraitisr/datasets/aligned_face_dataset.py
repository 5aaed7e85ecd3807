"""Aligned face crops with bicubic LR and optional parsing maps: PortraitSR's CelebA/Helen protocol.

PortraitSR (AAAI 2026), "Datasets": 128x128 HR faces, LR made by bicubic downsampling to 32x32 (x4) or 16x16 (x8).
Parsing maps (targets of ``L_pm``, Eq. 12) come, in this order, from
1. ``parsing_root``: one file per face with the image's stem: ``.png`` class-index maps (CelebAMask-HQ style,
   values ``0..K-1``) or ``.npy`` ``K x H x W`` float maps;
2. ``parser``: a ``FACE_PARSERS`` model (e.g. facexlib BiSeNet) run once per face on the HR crop and cached,
   when its weights can be resolved (each data-loader worker keeps its own cache: for large sets, write the maps
   to a ``parsing_root`` once instead);
3. neither: items carry no ``parsing`` and ``metainfo['has_parsing'] = False``; a warning says so once, and the
   PortraitSR model then trains without ``L_pm`` (its parsing decoder is still trained through the SR losses,
   since SSP and HPF use it). ``require_parsing=True`` turns this case into an error instead.
"""
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from portraitisr.registry import DATASETS, FACE_PARSERS
from portraitisr.utils.image_io import check_image_size, list_images, read_image_size
from portraitisr.weights import WeightsNotFoundError
from .image_folder_dataset import read_rgb, resize_square, to_chw_tensor

LFW_SCHEME = 'lfw://'  # lfw://INDEX: face INDEX (0..99) of scikit-image's ``lfw_subset()`` (25x25 grey crops)
LFW_NUM_FACES = 100  # lfw_subset() holds 100 faces followed by 100 non-face patches


def lfw_faces(start: int = 0, stop: int = LFW_NUM_FACES) -> List[str]:
    """Names ``lfw://i`` of scikit-image's LFW face crops ``start..stop-1`` (a held-out split is a range)."""
    if not 0 <= start < stop <= LFW_NUM_FACES:
        raise ValueError(f'LFW face range must lie in [0, {LFW_NUM_FACES}), got {start}..{stop}')
    return [f'{LFW_SCHEME}{i}' for i in range(start, stop)]


def _read_face(path: str) -> np.ndarray:
    """A file, ``sample://NAME`` or ``lfw://INDEX`` -> float32 ``H x W x 3`` RGB in [0, 1]."""
    if path.startswith(LFW_SCHEME):
        from skimage.data import lfw_subset
        face = lfw_subset()[int(path[len(LFW_SCHEME):])].astype(np.float32)
        return np.repeat(face[..., None], 3, axis=2)
    return read_rgb(path)


def bicubic_downsample(gt: torch.Tensor, scale: int) -> torch.Tensor:
    """``3 x H x W`` in [0, 1] -> ``3 x H/scale x W/scale``: antialiased bicubic (MATLAB ``imresize``-like), clamped."""
    h, w = gt.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f'image size {h}x{w} is not a multiple of the scale {scale}')
    lq = F.interpolate(gt[None], size=(h // scale, w // scale), mode='bicubic', align_corners=False, antialias=True)
    return lq[0].clamp(0, 1)


def one_hot_labels(labels: np.ndarray, num_classes: int, size: int) -> torch.Tensor:
    """``H x W`` class indices -> ``K x size x size`` one-hot float (nearest resize: labels must not blend)."""
    index = torch.from_numpy(labels.astype(np.int64))[None, None].float()
    index = F.interpolate(index, size=(size, size), mode='nearest')[0, 0].long()
    if index.min() < 0 or index.max() >= num_classes:
        raise ValueError(f'parsing labels must lie in [0, {num_classes}), got {int(index.min())}..{int(index.max())}')
    return F.one_hot(index, num_classes).permute(2, 0, 1).float()


@DATASETS.register_module()
class AlignedFaceDataset(Dataset):
    """Aligned faces resized to ``size x size`` with a bicubic ``size/scale`` LR (paired, no online degradation).

    Args:
        data_root: folder of aligned face images (recursive), or None.
        images: explicit paths, ``sample://NAME`` or ``lfw://INDEX`` entries (see :func:`lfw_faces`).
        lfw_range: ``(start, stop)``: add scikit-image's LFW faces ``start..stop-1`` (real faces on every machine;
            grey 25x25 crops, so upscaled to ``size`` they are smooth: fine for debugging, not a benchmark).
        size: HR side (128 in the paper); other sizes are resized with PIL LANCZOS.
        scale: 4 or 8 (the paper's x4 / x8), any divisor of ``size``.
        flip: random horizontal flip (image and parsing together).
        repeat: the list repeated per epoch (tiny sets).
        parsing_root / parser / num_parsing_classes / require_parsing: see the module docstring.
    Each item: ``{'gt': 3 x S x S, 'lq': 3 x S/s x S/s, ['parsing': K x S x S,] 'metainfo': {...}}``, float32 in
    [0, 1].
    """

    def __init__(self, data_root: Optional[str] = None, images: Optional[Sequence[str]] = None,
                 lfw_range: Optional[Tuple[int, int]] = None, size: int = 128,
                 scale: int = 8, flip: bool = False, repeat: int = 1, parsing_root: Optional[str] = None,
                 parser: Optional[dict] = None, num_parsing_classes: int = 19, require_parsing: bool = False) -> None:
        paths = list(images or [])
        if data_root is not None:
            paths += [str(p) for p in list_images(data_root, recursive=True)]
        if lfw_range is not None:
            paths += lfw_faces(*lfw_range)
        if not paths:
            raise ValueError('AlignedFaceDataset needs data_root, images or lfw_range')
        if size % scale:
            raise ValueError(f'size {size} must be a multiple of scale {scale}')
        self.paths, self.size, self.scale, self.flip, self.repeat = paths, size, scale, flip, repeat
        self.parsing_root, self.num_parsing_classes = parsing_root, num_parsing_classes
        self.parser = None if parsing_root is not None else self._build_parser(parser)
        self.has_parsing = parsing_root is not None or self.parser is not None
        self._parsing_cache: dict = {}
        if not self.has_parsing:
            if require_parsing:
                raise FileNotFoundError('require_parsing=True but neither parsing_root nor a usable parser is set')
            self._log('no parsing maps (no parsing_root, no parser weights): items carry no `parsing`; PortraitSR '
                      'trains without the parsing-map loss L_pm')

    @staticmethod
    def _log(message: str) -> None:
        from mmengine.logging import print_log
        print_log(f'AlignedFaceDataset: {message}', logger='current', level=30)  # WARNING

    def _build_parser(self, parser: Optional[dict]):
        if parser is None:
            return None
        try:
            model = FACE_PARSERS.build(parser)
        except WeightsNotFoundError as error:
            self._log(f'face parser {parser.get("type")} unavailable ({str(error).splitlines()[0]})')
            return None
        if getattr(model, 'num_classes', self.num_parsing_classes) != self.num_parsing_classes:
            raise ValueError(f'parser gives {model.num_classes} classes, num_parsing_classes is '
                             f'{self.num_parsing_classes}')
        return model

    def __len__(self) -> int:
        return len(self.paths) * self.repeat

    def _parsing(self, index: int, path: str, gt: torch.Tensor) -> torch.Tensor:
        if index in self._parsing_cache:
            return self._parsing_cache[index]
        if self.parsing_root is not None:
            stem = os.path.splitext(os.path.basename(path))[0]
            npy, png = (os.path.join(self.parsing_root, stem + ext) for ext in ('.npy', '.png'))
            if os.path.exists(npy):
                # the header first (memory-mapped): a file claiming a huge map is refused before it is read
                mapped = np.load(npy, allow_pickle=False, mmap_mode='r')
                if mapped.ndim != 3:
                    raise ValueError(f'parsing map {npy} must be K x H x W, got shape {mapped.shape}')
                check_image_size(mapped.shape[2], mapped.shape[1], npy)
                maps = torch.from_numpy(np.array(mapped)).float()[None]
                parsing = F.interpolate(maps, size=(self.size, self.size), mode='bilinear', align_corners=False)[0]
            elif os.path.exists(png):
                from PIL import Image
                check_image_size(*read_image_size(png), png)  # the pixel limit of every reader, from the header
                with Image.open(png) as labels:
                    parsing = one_hot_labels(np.asarray(labels), self.num_parsing_classes, self.size)
            else:
                raise FileNotFoundError(f'no parsing map {stem}.npy or {stem}.png in parsing_root for {path}')
        else:
            parsing = self.parser(gt[None])[0].float()
        if parsing.shape != (self.num_parsing_classes, self.size, self.size):
            raise ValueError(f'parsing map of {path} has shape {tuple(parsing.shape)}, expected '
                             f'{(self.num_parsing_classes, self.size, self.size)}')
        self._parsing_cache[index] = parsing
        return parsing

    def load(self, index: int) -> Tuple[str, torch.Tensor]:
        """The ``index``-th face (before flipping) as ``(path, 3 x size x size)``."""
        path = self.paths[index % len(self.paths)]
        return path, to_chw_tensor(resize_square(_read_face(path), self.size))

    def __getitem__(self, index: int) -> dict:
        path, gt = self.load(index)
        parsing = self._parsing(index % len(self.paths), path, gt) if self.has_parsing else None
        if self.flip and np.random.rand() < 0.5:  # numpy's generator: mmengine seeds it per worker
            gt = gt.flip(-1)
            parsing = parsing.flip(-1) if parsing is not None else None
        item = dict(gt=gt, lq=bicubic_downsample(gt, self.scale),
                    metainfo=dict(path=path, index=index, scale=self.scale, has_parsing=parsing is not None))
        if parsing is not None:
            item['parsing'] = parsing
        return item
