"""Small generated images for tests: smooth random photos and decompression bombs' headers."""
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB image, float32 ``(h, w, 3)`` in [0, 1] (bicubic upsampling of 4x4 noise)."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.random((4, 4, 3), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def png_claiming(width: int, height: int, gray: bool = False, rows: bool = False) -> bytes:
    """A PNG whose header claims ``width x height`` 8-bit RGB (or ``gray``) pixels: with almost no data (under 100
    bytes), or with every row of zeros compressed in (``rows``: a real decompression bomb, 260 KB for a gray
    16384 x 16384 that decodes to 268 MB, 3.2 GB as float RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)

    if rows:
        packer, row = zlib.compressobj(9), b'\x00' * (width * (1 if gray else 3) + 1)
        data = b''.join(packer.compress(row) for _ in range(height)) + packer.flush()
    else:
        data = zlib.compress(b'\x00' * 64)
    header = struct.pack('>IIBBBBB', width, height, 8, 0 if gray else 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', data) + chunk(b'IEND', b'')


def png_bomb(path: Path, side: int = 60000) -> Path:
    """Write a PNG of a few dozen bytes whose header claims ``side x side`` RGB pixels (a bomb's first bytes)."""
    path.write_bytes(png_claiming(side, side))
    return path
