"""PatchGAN discriminator on aligned face crops, for HeadsUp's face adversarial loss (HeadsUp, arXiv 2510.09924, Eq. 2).

HeadsUp names a face adversarial term ``L_F^adv`` but specifies neither the discriminator nor the
GAN objective. The choice made here is ours: a pix2pix-style PatchGAN (``NLayerDiscriminator``
layout) that scores overlapping face patches, spectrally normalised by default.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from portraitisr.registry import MODELS

_NORMS = ('spectral', 'instance', 'none')


@MODELS.register_module()
class FacePatchDiscriminator(nn.Module):
    """PatchGAN that gives one real/fake logit per receptive field of an aligned face crop.

    Layout (pix2pix ``NLayerDiscriminator``): 4x4 convolutions, the first ``num_layers`` with
    stride 2 and the next one with stride 1, widths ``base_channels * min(2**i, 8)``, LeakyReLU
    0.2 after each, then a 4x4 convolution to one channel (no activation: logits). With the
    defaults every logit sees a 70x70 patch of the (possibly resized) face.

    Our choices, not the paper's:

    * ``norm='spectral'`` (default) wraps every convolution in spectral normalisation. It keeps D
      Lipschitz-bounded, which is what lets it train stably next to an AdamW generator, and it
      has no batch statistics: nothing to synchronise across ranks, and a batch with one face
      behaves like a batch with sixteen. ``'instance'`` is pix2pix's original (instance norm on
      all but the first and last convolution); ``'none'`` is a plain conv net.
    * ``input_size`` resizes faces (bilinear, antialiased) before judging them, so a 512 crop can
      be scored at 256 for a quarter of the activation memory.

    Weights are drawn from N(0, 0.02) as in pix2pix (instance-norm scales from N(1, 0.02)).

    Args:
        in_channels: channels of the face crops.
        base_channels: width of the first convolution.
        num_layers: number of stride-2 convolutions.
        norm: ``'spectral'``, ``'instance'`` or ``'none'``.
        input_size: ``None`` (judge at the given size), an int (square) or ``(h, w)``.

    ``forward(faces)``: ``N x C x h x w`` faces in [0, 1] (mapped to [-1, 1] here) ->
    ``N x 1 x h' x w'`` logits, ``h' x w'`` given by :meth:`output_size`. ``N = 0`` (no face in
    the batch) gives an empty ``0 x 1 x h' x w'`` tensor that still depends on every parameter.

    Determinism: in ``eval()`` the output is a pure function of the input. In ``train()``,
    spectral norm takes one power-iteration step per call (deterministic, but it updates the
    singular-vector buffers), as spectral normalisation is meant to.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3,
                 norm: str = 'spectral', input_size: Optional[Union[int, Sequence[int]]] = None) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f'norm must be one of {_NORMS}, got {norm!r}')
        if num_layers < 1:
            raise ValueError(f'num_layers must be >= 1, got {num_layers}')
        self.in_channels, self.num_layers, self.norm = in_channels, num_layers, norm
        if input_size is None:
            self.input_size: Optional[Tuple[int, int]] = None
        elif isinstance(input_size, int):
            self.input_size = (input_size, input_size)
        else:
            self.input_size = (int(input_size[0]), int(input_size[1]))

        widths = [in_channels] + [base_channels * min(2**i, 8) for i in range(num_layers + 1)]
        layers: List[nn.Module] = []
        for i in range(num_layers + 1):
            stride = 2 if i < num_layers else 1
            # pix2pix leaves the first convolution unnormalised: instance norm right on the image
            # would discard its global colour and contrast, which D should be able to judge.
            use_instance = norm == 'instance' and i > 0
            layers.append(self._conv(widths[i], widths[i + 1], stride, bias=not use_instance))
            if use_instance:
                instance_norm = nn.InstanceNorm2d(widths[i + 1], affine=True)
                nn.init.normal_(instance_norm.weight, 1.0, 0.02)
                nn.init.zeros_(instance_norm.bias)
                layers.append(instance_norm)
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        layers.append(self._conv(widths[-1], 1, 1, bias=True))
        self.body = nn.Sequential(*layers)

    def _conv(self, in_ch: int, out_ch: int, stride: int, bias: bool) -> nn.Module:
        conv = nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=stride, padding=1, bias=bias)
        # Initialise before spectral norm wraps the weight, so the N(0, 0.02) draw is the
        # unnormalised ``original`` that the optimiser updates.
        nn.init.normal_(conv.weight, 0.0, 0.02)
        if bias:
            nn.init.zeros_(conv.bias)
        return spectral_norm(conv) if self.norm == 'spectral' else conv

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """Spatial size ``(h', w')`` of the logit map for ``height x width`` input faces."""
        if self.input_size is not None:
            height, width = self.input_size

        def shrink(size: int) -> int:
            for _ in range(self.num_layers):
                size = (size - 2) // 2 + 1  # 4x4, stride 2, padding 1
            return size - 2  # two 4x4, stride 1, padding 1 convolutions: -1 each

        return shrink(height), shrink(width)

    def forward(self, faces: Tensor) -> Tensor:
        if faces.dim() != 4 or faces.shape[1] != self.in_channels:
            raise ValueError(f'expected N x {self.in_channels} x h x w faces, got {tuple(faces.shape)}')
        out_h, out_w = self.output_size(faces.shape[2], faces.shape[3])
        if out_h < 1 or out_w < 1:
            raise ValueError(f'faces of {tuple(faces.shape[2:])} (judged at {self.input_size or "input size"}) '
                             f'are too small for {self.num_layers} stride-2 layers')
        if faces.shape[0] == 0:
            # Instance norm cannot run on an empty batch. Return an empty logit map that still
            # touches every parameter, so DDP sees a (zero) gradient for all of them on a rank
            # whose batch held no face instead of stalling on unused parameters.
            anchor = faces.sum() * 0 + sum(p.sum() for p in self.parameters()) * 0
            return faces.new_zeros((0, 1, out_h, out_w)) + anchor
        if self.input_size is not None and tuple(faces.shape[2:]) != self.input_size:
            faces = F.interpolate(faces, size=self.input_size, mode='bilinear', align_corners=False,
                                  antialias=True)
        return self.body(faces * 2 - 1)
