"""Small generated images for tests: smooth random photos and a decompression bomb's header."""
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB image, float32 ``(h, w, 3)`` in [0, 1] (bicubic upsampling of 4x4 noise)."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.random((4, 4, 3), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def png_bomb(path: Path, side: int = 60000) -> Path:
    """A PNG of a few dozen bytes whose header claims ``side x side`` pixels (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)

    body = chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(b''))
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + body + chunk(b'IEND', b''))
    return path
