"""GFPGAN's facial component discriminator, portable (no compiled ops), for eye and mouth crops.

GFP-GAN (Wang et al., CVPR 2021) judges the eyes and the mouth of a restored face with one small discriminator
per component (``gfpgan/archs/gfpganv1_arch.py:FacialComponentDiscriminator``); AuthFace (arXiv 2410.09864, section 3.2)
takes the idea to the latent space: "we train separate facial feature discriminators ... D_eyes and D_mouth" on
crops of the predicted and the GT latents, and its style term uses the discriminator's multi-scale features
(``psi`` of Eq. 4).

The layout is GFPGAN's (TencentARC/GFPGAN ``gfpgan/archs/gfpganv1_arch.py``)::

    conv1  ConvLayer(C -> c,   3)                    H
    conv2  ConvLayer(c -> 2c,  3, downsample)        H/2
    conv3  ConvLayer(2c -> 2c, 3)                    H/2   -> feature 0
    conv4  ConvLayer(2c -> 4c, 3, downsample)        H/4
    conv5  ConvLayer(4c -> 4c, 3)                    H/4   -> feature 1
    final  ConvLayer(4c -> 1,  3, bias, no activation)     -> logits (B x 1 x H/4 x W/4)

with BasicSR's StyleGAN2 ``ConvLayer``: an optional blur (the ``(1, 3, 3, 1)`` resample kernel, padded 2 on each
side) before a stride-2 convolution, an equalised-learning-rate convolution (weights ~ N(0, 1) scaled by
``1 / sqrt(in * k * k)`` at run time) and a fused leaky ReLU (a learned bias, slope 0.2, gain sqrt 2). BasicSR runs
the last two through a CUDA extension with no CPU path; here they are plain torch ops with the same maths, so the
discriminator also trains on the CPU. Parameter names match GFPGAN's state dict (``conv1.0.weight``,
``conv1.1.bias``, ``conv2.1.weight``, ...), so its released RGB component discriminators load into
``in_channels=3, base_channels=64``. AuthFace's crops are 4-channel SD latents (``in_channels=4``).
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import MODELS

#: StyleGAN2's resample kernel (BasicSR ``ConvLayer(resample_kernel=(1, 3, 3, 1))``)
RESAMPLE_KERNEL = (1, 3, 3, 1)


class Blur(nn.Module):
    """``upfirdn2d(x, k, pad=(p0, p1))`` with the normalised separable kernel ``outer(k, k) / sum``.

    BasicSR's ``UpFirDnSmooth`` for a stride-2 3x3 ``ConvLayer``: pad ``(2, 2)`` (``(len(k) - 2) + (3 - 1)`` split
    in two), then a depthwise correlation with the flipped kernel (the kernel is symmetric, so flipping changes
    nothing). The kernel is a non-persistent buffer: GFPGAN's state dict has no entry for it.
    """

    def __init__(self, kernel: Sequence[int] = RESAMPLE_KERNEL, pad: Tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        k = torch.tensor(kernel, dtype=torch.float32)
        k = k[None, :] * k[:, None]
        self.register_buffer('kernel', k / k.sum(), persistent=False)
        self.pad = tuple(pad)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        weight = self.kernel.to(x.dtype).flip(0, 1)[None, None].expand(channels, 1, -1, -1)
        x = F.pad(x, (self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
        return F.conv2d(x, weight, groups=channels)


class EqualConv2d(nn.Module):
    """StyleGAN2's equalised-learning-rate convolution: weights ~ N(0, 1), multiplied by ``1 / sqrt(fan_in)`` in
    the forward pass, so every layer learns at the same rate under Adam."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        weight, bias = (self.weight, self.bias) if not frozen else _detached(self.weight, self.bias)
        return F.conv2d(x, weight * self.scale, bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        out_channels, in_channels, k, _ = self.weight.shape
        return f'{in_channels}, {out_channels}, kernel_size={k}, stride={self.stride}, padding={self.padding}'


class FusedLeakyReLU(nn.Module):
    """``leaky_relu(x + bias, 0.2) * sqrt(2)`` with a learned per-channel bias (BasicSR's fused op, in torch)."""

    def __init__(self, channels: int, negative_slope: float = 0.2, scale: float = math.sqrt(2)) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.negative_slope, self.scale = negative_slope, scale

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        bias = self.bias.detach() if frozen else self.bias
        return F.leaky_relu(x + bias.view(1, -1, 1, 1).to(x.dtype), self.negative_slope) * self.scale


def _detached(*tensors):
    return tuple(t.detach() if t is not None else None for t in tensors)


class ConvLayer(nn.Sequential):
    """BasicSR's StyleGAN2 ``ConvLayer``: ``[Blur,] EqualConv2d [, FusedLeakyReLU]``, keeping its parameter
    names (``0.weight``, ``1.bias``, ...). The convolution has its own bias only without activation (the activation
    carries it). ``forward(x, frozen)`` passes ``frozen`` to the layers with weights."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, downsample: bool = False,
                 bias: bool = True, activate: bool = True) -> None:
        layers: List[nn.Module] = []
        if downsample:
            pad = (len(RESAMPLE_KERNEL) - 2) + (kernel_size - 1)
            layers.append(Blur(RESAMPLE_KERNEL, ((pad + 1) // 2, pad // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride, padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        for module in self:
            x = module(x, frozen) if isinstance(module, (EqualConv2d, FusedLeakyReLU)) else module(x)
        return x


@MODELS.register_module()
class FacialComponentDiscriminator(nn.Module):
    """GFPGAN's eye / mouth discriminator: ``forward(x) -> (logits, [feature0, feature1])``.

    Args:
        in_channels: channels of the crops: 4 for SD latents (AuthFace), 3 for RGB pixels (GFPGAN).
        base_channels: width of ``conv1`` (GFPGAN: 64); the later layers use 2x and 4x.
        init_seed: seed of the random initialisation (N(0, 1) weights, zero biases), so every rank of a
            distributed run and a resumed run build the same discriminator; None draws from torch's generator.

    ``forward(x, frozen=False)``: input ``B x in_channels x H x W`` with ``H``, ``W`` multiples of 4 (two
    stride-2 layers). Returns the logits ``B x 1 x H/4 x W/4`` (one per receptive field; higher means "real")
    and the multi-scale features ``[B x 2c x H/2 x W/2 (after conv3), B x 4c x H/4 x W/4 (after conv5)]`` that
    the Gram-matrix style term compares (GFPGAN ``return_feats=True``).
    """

    def __init__(self, in_channels: int = 4, base_channels: int = 64, init_seed: Optional[int] = 0) -> None:
        super().__init__()
        c = base_channels
        with torch.random.fork_rng(devices=[], enabled=init_seed is not None):
            if init_seed is not None:
                torch.manual_seed(init_seed)
            self.conv1 = ConvLayer(in_channels, c, 3)
            self.conv2 = ConvLayer(c, 2 * c, 3, downsample=True)
            self.conv3 = ConvLayer(2 * c, 2 * c, 3)
            self.conv4 = ConvLayer(2 * c, 4 * c, 3, downsample=True)
            self.conv5 = ConvLayer(4 * c, 4 * c, 3)
            self.final_conv = ConvLayer(4 * c, 1, 3, bias=True, activate=False)
        self.in_channels = in_channels

    def forward(self, x: Tensor, frozen: bool = False) -> Tuple[Tensor, List[Tensor]]:
        """Logits and features of ``x``. ``frozen=True`` uses detached weights: gradients reach ``x`` but not the
        discriminator (the generator's step). Detaching inside the forward, rather than switching
        ``requires_grad`` off, also holds under FSDP2, which keeps the ``requires_grad`` its unsharded parameters
        had at their first all-gather."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'FacialComponentDiscriminator expects B x {self.in_channels} x H x W, got '
                             f'{tuple(x.shape)}')
        feat = x
        for layer in (self.conv1, self.conv2, self.conv3):
            feat = layer(feat, frozen)
        features = [feat]
        for layer in (self.conv4, self.conv5):
            feat = layer(feat, frozen)
        features.append(feat)
        return self.final_conv(feat, frozen), features
