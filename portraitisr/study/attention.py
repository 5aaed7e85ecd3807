"""Attention checks: questions whose answer is known, to find participants who click without looking.

A check shows one clean image among strongly corrupted copies of it (blur, pixelation, noise, JPEG blocks). In a
WR_id study the reference is the clean image itself, so the clean candidate is identical to it; in a WR_N study it
is the only natural one; in an A/B study it is better than its corrupted copy, and "both equally good" is wrong.
The corruptions and their strengths are our choice (neither paper describes attention checks): strong enough that
nobody looking at the screen can miss them, at any display size.
"""
from __future__ import annotations

from typing import Callable, Dict

import cv2
import numpy as np

__all__ = ['CORRUPTIONS', 'corrupt']


def _blur(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = max(3.0, 0.025 * min(rgb.shape[:2]))  # 12.8 px on a 512 px face: features are gone
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def _pixelate(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, w // 24), max(1, h // 24)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _noise(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rgb + rng.normal(0.0, 0.3, rgb.shape).astype(np.float32), 0.0, 1.0)


def _jpeg(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bgr = np.round(np.clip(rgb[..., ::-1], 0, 1) * 255).astype(np.uint8)
    ok, data = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, 2])
    if not ok:
        raise RuntimeError('OpenCV failed to JPEG-encode an attention-check image')
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


#: ``name -> corruption``; ``H x W x 3`` float32 RGB in [0, 1] in and out. Combinations follow the single ones so
#: that studies with up to seven methods get a different corruption in every slot (A/B checks use the first four).
CORRUPTIONS: Dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    'blur': _blur,
    'pixelate': _pixelate,
    'noise': _noise,
    'jpeg': _jpeg,
    'blur+noise': lambda rgb, rng: _noise(_blur(rgb, rng), rng),
    'pixelate+noise': lambda rgb, rng: _noise(_pixelate(rgb, rng), rng),
}


def corrupt(rgb: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """Apply corruption ``name`` to ``H x W x 3`` float RGB in [0, 1]; returns float32 RGB in [0, 1]."""
    if name not in CORRUPTIONS:
        raise KeyError(f'unknown corruption {name!r}; choose from {", ".join(CORRUPTIONS)}')
    return np.ascontiguousarray(CORRUPTIONS[name](np.asarray(rgb, dtype=np.float32), rng), dtype=np.float32)
