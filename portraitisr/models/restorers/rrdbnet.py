"""RRDBNet (ESRGAN / Real-ESRGAN generator) and the Real-ESRGAN restorer.

The network keeps the parameter names of BasicSR's ``RRDBNet`` (XPixelGroup/BasicSR
``basicsr/archs/rrdbnet_arch.py``), so the official Real-ESRGAN checkpoints load with ``strict=True``:
``conv_first``, ``body.<i>.rdb{1,2,3}.conv{1..5}``, ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``,
``conv_last``. Real-ESRGAN's inference (xinntao/Real-ESRGAN ``realesrgan/utils.py``, ``RealESRGANer.enhance``)
feeds RGB in [0, 1] (BGR files are converted to RGB, divided by 255) and clamps the output to [0, 1]; that is the
library's own image convention, so no normalisation is needed.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import RESTORERS
from portraitisr.weights import load_module_weights
from .base_restorer import BaseImageRestorer
from portraitisr.utils.tiling import tiled_forward

__all__ = ['ResidualDenseBlock', 'RRDB', 'RRDBNet', 'RealESRGANRestorer', 'REALESRGAN_WEIGHTS',
           'load_restorer_weights']

# Residual scaling of every dense block and RRDB (BasicSR rrdbnet_arch.py: "we use 0.2 to scale the residual").
RESIDUAL_SCALE = 0.2
# LeakyReLU slope used throughout (BasicSR rrdbnet_arch.py: nn.LeakyReLU(negative_slope=0.2)).
LRELU_SLOPE = 0.2

#: Official checkpoints by scale (URLs from xinntao/Real-ESRGAN ``inference_realesrgan.py``; both hold
#: ``params_ema``). No sha256 is published for them, so none is checked.
REALESRGAN_WEIGHTS = {
    4: {'filename': 'RealESRGAN_x4plus.pth',
        'url': 'https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth'},
    2: {'filename': 'RealESRGAN_x2plus.pth',
        'url': 'https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth'},
}


def load_restorer_weights(module: nn.Module, weights: Any) -> str:
    """Resolve ``weights`` (path, file name, URL or dict spec) and load it into ``module`` with ``strict=True``.

    The state dict may be nested as ``{'params_ema': ...}`` (preferred) or ``{'params': ...}`` as BasicSR saves
    it, or be a bare dict of tensors; a DataParallel ``module.`` prefix is removed. A missing, extra or
    wrongly shaped key raises ``RuntimeError`` naming the file and the keys.

    Returns:
        The path of the loaded file.
    """
    # Same unwrapping and strict copy as the identity extractors (params_ema is tried before params).
    return load_module_weights(module, weights, prefixes=('module.',))


def _init_scaled_kaiming(module: nn.Module, scale: float) -> None:
    """Kaiming-normal conv weights times ``scale``, zero bias (BasicSR arch_util.py ``default_init_weights``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            m.weight.data.mul_(scale)
            if m.bias is not None:
                m.bias.data.zero_()


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; ``x + 0.2 * conv5(...)``. ``B x F x H x W`` -> same shape."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        for i in range(5):
            out_ch = num_feat if i == 4 else num_grow_ch
            setattr(self, f'conv{i + 1}', nn.Conv2d(num_feat + i * num_grow_ch, out_ch, 3, 1, 1))
        # BasicSR initialises the dense convs with kaiming x 0.1 so that the residual starts small.
        _init_scaled_kaiming(self, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for i in range(1, 5):
            conv = getattr(self, f'conv{i}')
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), LRELU_SLOPE))
        return self.conv5(torch.cat(features, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks and a 0.2-scaled skip. Shape-preserving."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """ESRGAN generator with BasicSR's layout, for ``scale`` 4, 2 or 1.

    For scale 2 and 1 the input is pixel-unshuffled by 2 and 4 (``num_in_ch`` x4 and x16 channels) and the
    same x4 upsampling tail is used, as BasicSR does; ``F.pixel_unshuffle`` orders channels exactly like
    BasicSR's ``arch_util.pixel_unshuffle`` (channel-major, then row offset, then column offset).

    Args:
        num_in_ch, num_out_ch: image channels (3 for RGB).
        scale: 4, 2 or 1.
        num_feat: trunk width (64 in Real-ESRGAN).
        num_block: number of RRDBs (23 in RealESRGAN_x4plus / x2plus, 6 in the anime model).
        num_grow_ch: growth channels of the dense blocks (32).
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f'RRDBNet supports scale 1, 2 or 4, got {scale}')
        self.scale = scale
        self.unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle ** 2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``B x C x H x W`` (RGB in [0, 1]; H, W multiples of 4 / scale) -> ``B x C x (scale*H) x (scale*W)``."""
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode='nearest')), LRELU_SLOPE)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode='nearest')), LRELU_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), LRELU_SLOPE))


def _pad_right_bottom(x: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Reflect-pad on the right and bottom (as RealESRGANer does); replicate where the image is too small."""
    if pad_h == 0 and pad_w == 0:
        return x
    mode = 'reflect' if pad_h < x.shape[-2] and pad_w < x.shape[-1] else 'replicate'
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


@RESTORERS.register_module()
class RealESRGANRestorer(BaseImageRestorer):
    """Real-ESRGAN general SR (x4 or x2) on whole images, optionally tiled.

    Args:
        scale: 4 (``RealESRGAN_x4plus.pth``), 2 (``RealESRGAN_x2plus.pth``) or 1 (needs explicit ``weights``).
        weights: a weight spec for :func:`portraitisr.weights.resolve_file`; ``None`` means the
            official file for ``scale`` (looked up in ``PORTRAITISR_HOME`` and the caches, downloaded only when
            downloads are allowed).
        pretrained: ``False`` builds a randomly initialised network (tests, training from scratch); it must
            then come without ``weights``.
        num_block, num_feat, num_grow_ch: RRDBNet size (the official models: 23, 64, 32).
        tile: tile side in input pixels; 0 runs the whole image at once.
        tile_overlap: overlap of neighbouring tiles, input pixels (see :func:`tiled_forward`).
        pre_pad: reflect padding added at the right/bottom before the network and cropped after
            (``RealESRGANer``'s ``pre_pad``: 10 in Real-ESRGAN's script, 0 in CodeFormer's).
        progress: show a progress bar over many tiles.
    """

    def __init__(self, scale: int = 4, weights: Optional[Any] = None, num_block: int = 23, num_feat: int = 64,
                 num_grow_ch: int = 32, tile: int = 0, tile_overlap: int = 32, pretrained: bool = True,
                 pre_pad: int = 0, progress: bool = True) -> None:
        super().__init__()
        self.scale = int(scale)
        self.net = RRDBNet(3, 3, scale=self.scale, num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch)
        self.tile, self.tile_overlap = int(tile), int(tile_overlap)
        self.pre_pad, self.progress = int(pre_pad), bool(progress)
        if tile < 0 or (tile > 0 and not 0 <= tile_overlap < tile):
            raise ValueError(f'need tile >= 0 and 0 <= tile_overlap < tile, got tile={tile}, '
                             f'tile_overlap={tile_overlap}')
        self.weights_path: Optional[str] = None
        if pretrained:
            if weights is None:
                if self.scale not in REALESRGAN_WEIGHTS or (num_block, num_feat, num_grow_ch) != (23, 64, 32):
                    raise ValueError(f'no official Real-ESRGAN weights for scale={scale}, num_block={num_block}, '
                                     f'num_feat={num_feat}, num_grow_ch={num_grow_ch}; pass weights= or '
                                     'pretrained=False')
                weights = REALESRGAN_WEIGHTS[self.scale]
            self.weights_path = load_restorer_weights(self.net, weights)
        self._finish_init(pretrained, weights)

    def restore(self, image: Tensor) -> Tensor:
        """``B x 3 x H x W`` RGB in [0, 1] -> ``B x 3 x (scale*H) x (scale*W)`` RGB (unclamped)."""
        height, width = image.shape[-2:]
        param = next(self.net.parameters())
        x = image.to(param.dtype)
        x = _pad_right_bottom(x, self.pre_pad, self.pre_pad)
        mod = self.net.unshuffle  # pixel-unshuffle needs sizes divisible by 2 (x2) or 4 (x1)
        x = _pad_right_bottom(x, -x.shape[-2] % mod, -x.shape[-1] % mod)
        if self.tile > 0:
            out = tiled_forward(self.net, x, self.scale, self.tile, self.tile_overlap, align=mod,
                                progress=self.progress)
        else:
            out = self.net(x)
        return out[..., :self.scale * height, :self.scale * width].to(image.dtype)

    def extra_repr(self) -> str:
        return f'scale={self.scale}, tile={self.tile}, tile_overlap={self.tile_overlap}'
