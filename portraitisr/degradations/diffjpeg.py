"""JPEG compression simulated with tensor ops, batched, one quality per sample.

Our port of the algorithm of BasicSR ``basicsr/utils/diffjpeg.py`` (itself after mlomnitz/DiffJPEG), which
Real-ESRGAN uses as ``DiffJPEG(differentiable=False)``; tests compare the two for equality. Steps:

1. ``x * 255``, RGB -> YCbCr (JPEG/JFIF matrix, chroma offset 128);
2. 4:2:0 chroma subsampling by a 2 x 2 average pool;
3. 8 x 8 blocks, level shift -128, orthonormal-scaled DCT-II;
4. quantisation: divide by ``table * factor`` and round (``torch.round``, or ``round(x) + (x - round(x))^3``
   in differentiable mode), then multiply back;
5. inverse DCT, +128, nearest chroma upsampling, YCbCr -> RGB, clamp to [0, 255], ``/ 255``.

The image is zero-padded at the bottom/right to a multiple of 16 (one 4:2:0 MCU) and cropped back.
``factor`` is libjpeg's quality scaling *without* its floor and [1, 255] clip: ``5000 / q`` for ``q < 50``,
else ``200 - 2 q``, then ``/ 100``; so fractional qualities act continuously (Real-ESRGAN draws float
qualities). This is why it differs from a real JPEG codec (``cv2.imencode``) and from kornia's
``jpeg_codec_differentiable`` (which floors and clips the tables).

Unlike BasicSR, the quality tensor passed in is never modified (BasicSR overwrites it with the factors).
"""
import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ITU-T T.81 Annex K tables (luma K.1, chroma K.2). BasicSR stores them transposed relative to the
# (vertical, horizontal) frequency layout of its DCT output, which swaps the horizontal and vertical
# quantisation steps; we keep that for parity (the tables are nearly symmetric).
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TOP_LEFT = ((17, 18, 24, 47), (18, 21, 26, 66), (24, 26, 56, 99), (47, 66, 99, 99))

# JFIF full-range conversion (BasicSR RGB2YCbCrJpeg / YCbCr2RGBJpeg).
_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_YCBCR_TO_RGB = ((1., 0., 1.402), (1., -0.344136, -0.714136), (1., 1.772, 0.))


def quality_to_factor(quality: Tensor) -> Tensor:
    """Quantisation-table multiplier for a JPEG quality in (0, 100]: ``5000/q`` if ``q < 50`` else
    ``200 - 2q``, divided by 100 (no floor, no clip). Returns a new tensor of the same dtype."""
    return torch.where(quality < 50, 5000. / quality, 200. - quality * 2) / 100.


def diff_round(x: Tensor) -> Tensor:
    """Rounding with a useful gradient: ``round(x) + (x - round(x))^3`` (Shin & Song 2017)."""
    return torch.round(x) + (x - torch.round(x)) ** 3


def _dct_basis(inverse: bool) -> Tensor:
    """``(64, 64)`` basis, rows indexed by ``8 * x + y`` and columns by ``8 * u + v``.

    Forward: ``cos((2x+1) u pi/16) cos((2y+1) v pi/16)``; inverse: ``cos((2u+1) x pi/16) cos((2v+1) y pi/16)``
    (the inverse maps coefficients ``(x, y)`` to pixels ``(u, v)``).
    """
    i = torch.arange(8, dtype=torch.float64)
    if inverse:
        cos = torch.cos((2 * i.view(1, 8) + 1) * i.view(8, 1) * math.pi / 16)  # [x, u]
    else:
        cos = torch.cos((2 * i.view(8, 1) + 1) * i.view(1, 8) * math.pi / 16)  # [x, u]
    basis = cos.view(8, 1, 8, 1) * cos.view(1, 8, 1, 8)  # [x, y, u, v]
    return basis.reshape(64, 64).float()


def _to_blocks(channel: Tensor) -> Tensor:
    """``(B, H, W)`` -> ``(B, H*W/64, 8, 8)``, blocks in raster order."""
    b, h, w = channel.shape
    return channel.view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 8, 8)


def _from_blocks(blocks: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`_to_blocks`."""
    b = blocks.shape[0]
    return blocks.view(b, height // 8, width // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, height, width)


class DiffJPEG(nn.Module):
    """Batched JPEG simulation with a per-sample quality (BasicSR ``DiffJPEG``).

    Args:
        differentiable: use :func:`diff_round` for quantisation (a straight gradient path); ``False``
            (Real-ESRGAN's choice) uses ``torch.round``.
    """

    def __init__(self, differentiable: bool = False) -> None:
        super().__init__()
        self.differentiable = differentiable
        alpha = torch.tensor([1. / math.sqrt(2)] + [1.] * 7, dtype=torch.float64)
        alpha2 = torch.outer(alpha, alpha)
        chroma = torch.full((8, 8), 99.)
        chroma[:4, :4] = torch.tensor(_CHROMA_TOP_LEFT, dtype=torch.float32)
        buffers = {
            'luma_table': torch.tensor(_LUMA_TABLE, dtype=torch.float32).t().contiguous(),
            'chroma_table': chroma.t().contiguous(),
            'dct_basis': _dct_basis(inverse=False),
            'dct_scale': (alpha2 * 0.25).float(),
            'idct_basis': _dct_basis(inverse=True),
            'idct_alpha': alpha2.float(),
            'rgb_to_ycbcr': torch.tensor(_RGB_TO_YCBCR, dtype=torch.float32).t().contiguous(),
            'ycbcr_to_rgb': torch.tensor(_YCBCR_TO_RGB, dtype=torch.float32).t().contiguous(),
            'ycbcr_offset': torch.tensor([0., 128., 128.]),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def _factor(self, quality: Union[float, Tensor], batch: int, device: torch.device) -> Tensor:
        if isinstance(quality, (int, float)):
            # scalar path in float64 like BasicSR's ``quality_to_factor(float)``
            factor = (5000. / quality if quality < 50 else 200. - quality * 2) / 100.
            return torch.full((batch, ), factor, dtype=torch.float32, device=device)
        quality = quality.to(device=device, dtype=torch.float32).reshape(-1)
        return quality_to_factor(quality).expand(batch)

    def _codec(self, channel: Tensor, table: Tensor) -> Tensor:
        """Quantise and restore one ``(B, H, W)`` plane in the DCT domain."""
        b, h, w = channel.shape
        blocks = _to_blocks(channel) - 128
        coeffs = self.dct_scale * torch.tensordot(blocks, self.dct_basis.view(8, 8, 8, 8), dims=2)
        rounding = diff_round if self.differentiable else torch.round
        coeffs = rounding(coeffs / table) * table
        pixels = 0.25 * torch.tensordot(coeffs * self.idct_alpha, self.idct_basis.view(8, 8, 8, 8), dims=2) + 128
        return _from_blocks(pixels, h, w)

    def forward(self, img: Tensor, quality: Union[float, Tensor]) -> Tensor:
        """Compresses and decompresses ``img``.

        Args:
            img: ``(B, 3, H, W)`` RGB in [0, 1] (clamp first: values outside make strong artefacts).
            quality: a number or a ``(B,)`` tensor of qualities in (0, 100], fractional allowed.

        Returns:
            ``(B, 3, H, W)`` in [0, 1], the dtype of ``img``.
        """
        if self.dct_basis.device != img.device:  # follow the images (the tables are tiny)
            self.to(img.device)
        b, _, h, w = img.shape
        factor = self._factor(quality, b, img.device).view(b, 1, 1, 1)
        pad_h, pad_w = (16 - h % 16) % 16, (16 - w % 16) % 16
        x = F.pad(img.float(), (0, pad_w, 0, pad_h), mode='constant', value=0)

        ycbcr = torch.tensordot((x * 255).permute(0, 2, 3, 1), self.rgb_to_ycbcr, dims=1) + self.ycbcr_offset
        planes = ycbcr.permute(0, 3, 1, 2)
        luma = planes[:, 0]
        chroma = F.avg_pool2d(planes[:, 1:], kernel_size=2, stride=2)  # 4:2:0
        luma = self._codec(luma, self.luma_table.expand(b, 1, 8, 8) * factor)
        chroma_table = self.chroma_table.expand(b, 1, 8, 8) * factor
        cb = self._codec(chroma[:, 0], chroma_table)
        cr = self._codec(chroma[:, 1], chroma_table)
        chroma = torch.stack([cb, cr], dim=1).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

        ycbcr = torch.cat([luma.unsqueeze(1), chroma], dim=1).permute(0, 2, 3, 1)
        rgb = torch.tensordot(ycbcr - self.ycbcr_offset, self.ycbcr_to_rgb, dims=1).permute(0, 3, 1, 2)
        rgb = torch.clamp(rgb, 0, 255) / 255
        return rgb[:, :, :h, :w].to(img.dtype)
