"""RetinaFace (ResNet-50 or MobileNet-0.25) with facexlib's checkpoint layout.

The module's own ``state_dict`` has exactly the keys of facexlib's ``detection_Resnet50_Final.pth`` and
``detection_mobilenet0.25_Final.pth`` (``body.*``, ``fpn.*``, ``ssh1..3.*``, ``ClassHead.*``, ``BboxHead.*``,
``LandmarkHead.*``), so those files load with ``strict=True``. Inference follows facexlib's ``detect_faces`` with
``use_origin_size=True``: BGR pixels in 0..255 minus the mean (104, 117, 123), prior boxes (min sizes
[[16, 32], [64, 128], [256, 512]], steps [8, 16, 32]), decoding with variances [0.1, 0.2], score threshold, NMS 0.4.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from portraitisr.registry import FACE_DETECTORS
from portraitisr.weights import load_state_dict, resolve_file
from .base_detector import BaseFaceDetector, FaceDetections, nms_detections

__all__ = ['RetinaFaceDetector', 'prior_boxes', 'decode_boxes', 'decode_landmarks', 'RETINAFACE_WEIGHTS']

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)

_RELEASE = 'https://github.com/xinntao/facexlib/releases/download/v0.1.0/'
#: network -> (file name, URL) of facexlib's released weights.
RETINAFACE_WEIGHTS = {
    'resnet50': ('detection_Resnet50_Final.pth', _RELEASE + 'detection_Resnet50_Final.pth'),
    'mobilenet0.25': ('detection_mobilenet0.25_Final.pth', _RELEASE + 'detection_mobilenet0.25_Final.pth'),
}
_ALIASES = {'resnet50': 'resnet50', 'mobilenet0.25': 'mobilenet0.25', 'mobile0.25': 'mobilenet0.25'}


# ---------------------------------------------------------------------------------------------------- layers
def _conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0, kernel: int = 3, act: bool = True):
    layers = [nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup)]
    if act:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1):
    """Depthwise 3x3 + pointwise 1x1, each with BN and LeakyReLU (indices 0,1 / 3,4 hold the weights)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True))


class _MobileNetV1Body(nn.Module):
    """MobileNet-0.25 trunk; ``forward`` returns the stage1/2/3 features (strides 8, 16, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2), _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2), _conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


def _resnet50_body() -> nn.Module:
    """torchvision's ResNet-50 up to layer4 (no avgpool/fc), random init, nothing downloaded."""
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    return IntermediateLayerGetter(torchvision.models.resnet50(weights=None),
                                   {'layer2': 'c3', 'layer3': 'c4', 'layer4': 'c5'})


class _FPN(nn.Module):

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = _conv_bn(in_channels[0], out_channels, leaky=leaky, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out_channels, leaky=leaky, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out_channels, leaky=leaky, kernel=1)
        self.merge1 = _conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = _conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode='nearest'))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode='nearest'))
        return [o1, o2, o3]


class _SSH(nn.Module):
    """Single-stage context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches, concatenated."""

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = _conv_bn(in_channel, out_channel // 2, act=False)
        self.conv5X5_1 = _conv_bn(in_channel, out_channel // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(out_channel // 4, out_channel // 4, act=False)
        self.conv7X7_2 = _conv_bn(out_channel // 4, out_channel // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(out_channel // 4, out_channel // 4, act=False)  # lower-case x, as in the files

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5_1 = self.conv5X5_1(x)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(b5_1), self.conv7x7_3(self.conv7X7_2(b5_1))], dim=1)
        return F.relu(out)


class _Head(nn.Module):
    """1x1 conv giving ``num_anchors * channels`` values per cell, reshaped to ``B x (H*W*A) x channels``."""

    def __init__(self, in_channels: int, channels: int, num_anchors: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.conv1x1 = nn.Conv2d(in_channels, num_anchors * channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.channels)


# ---------------------------------------------------------------------------------------------------- box maths
def prior_boxes(height: int, width: int, device=None) -> torch.Tensor:
    """RetinaFace anchors ``(P, 4)`` as ``(cx, cy, w, h)`` normalised by the image size.

    Per level k (stride ``STEPS[k]``, map ``ceil(H/step) x ceil(W/step)``), row-major over cells, then over
    ``MIN_SIZES[k]``: centre ``((j + 0.5) * step / W, (i + 0.5) * step / H)``, size ``(m / W, m / H)``.
    """
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(fh, dtype=torch.float32, device=device) + 0.5) * step / height
        cx = (torch.arange(fw, dtype=torch.float32, device=device) + 0.5) * step / width
        cyy, cxx = torch.meshgrid(cy, cx, indexing='ij')
        centres = torch.stack([cxx, cyy], dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        wh = torch.tensor([[m / width, m / height] for m in sizes], dtype=torch.float32, device=device)
        out.append(torch.cat([centres, wh.expand(centres.shape[0], -1, -1)], dim=-1).reshape(-1, 4))
    return torch.cat(out)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances=VARIANCE) -> torch.Tensor:
    """``(..., P, 4)`` regressions -> normalised ``x1, y1, x2, y2``:
    centre = prior_c + loc_xy * v0 * prior_wh, size = prior_wh * exp(loc_wh * v1)."""
    centre = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor, variances=VARIANCE) -> torch.Tensor:
    """``(..., P, 10)`` regressions -> normalised ``(..., P, 5, 2)`` points: prior_c + pre * v0 * prior_wh."""
    pre = pre.reshape(*pre.shape[:-1], 5, 2)
    return priors[..., None, :2] + pre * variances[0] * priors[..., None, 2:]


# ---------------------------------------------------------------------------------------------------- detector
@FACE_DETECTORS.register_module()
class RetinaFaceDetector(BaseFaceDetector):
    """RetinaFace face detector, facexlib-compatible weights and outputs.

    Args:
        network: ``'resnet50'`` or ``'mobilenet0.25'`` (``'mobile0.25'``, facexlib's name, is accepted).
        weights: a weight spec for :func:`~portraitisr.weights.resolve_file`; ``None`` looks for
            facexlib's file (``detection_Resnet50_Final.pth`` / ``detection_mobilenet0.25_Final.pth``) in
            ``$PORTRAITISR_HOME``, the torch hub caches and facexlib's ``weights`` folder, and downloads it from
            facexlib's release only when downloads are allowed.
        pretrained: ``False`` keeps the random initialisation and loads nothing (tests, benchmarks).
        allow_download: passed to the resolver (``None``: env ``PORTRAITISR_ALLOW_DOWNLOAD``).
        conf_threshold: face probability threshold; 0.97 is facexlib's ``FaceRestoreHelper`` value (its
            ``detect_faces`` default is 0.8).
        nms_threshold: IoU threshold of NMS (facexlib: 0.4).
        **kwargs: options of :class:`BaseFaceDetector` (``eye_dist_threshold``, ``only_keep_largest``, ...).

    Raises:
        WeightsNotFoundError: the weights are nowhere on disk and were not downloaded.
    """

    def __init__(self, network: str = 'resnet50', weights=None, pretrained: bool = True,
                 allow_download: Optional[bool] = None, conf_threshold: float = 0.97, nms_threshold: float = 0.4,
                 **kwargs) -> None:
        super().__init__(conf_threshold=conf_threshold, **kwargs)
        if network not in _ALIASES:
            raise ValueError(f"network must be one of {sorted(_ALIASES)}, got {network!r}")
        self.network = _ALIASES[network]
        self.nms_threshold = float(nms_threshold)
        if self.network == 'resnet50':
            self.body = _resnet50_body()
            in_ch, out_ch = 256, 256
        else:
            self.body = _MobileNetV1Body()
            in_ch, out_ch = 32, 64
        self.fpn = _FPN([in_ch * 2, in_ch * 4, in_ch * 8], out_ch)
        self.ssh1, self.ssh2, self.ssh3 = _SSH(out_ch, out_ch), _SSH(out_ch, out_ch), _SSH(out_ch, out_ch)
        self.ClassHead = nn.ModuleList([_Head(out_ch, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(out_ch, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(out_ch, 10) for _ in range(3)])
        self._priors: dict = {}
        if pretrained:
            self.load_weights(weights, allow_download=allow_download)
        elif weights is not None:
            raise ValueError('pretrained=False loads no weights; do not pass weights=')
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ weights
    def load_weights(self, weights=None, allow_download: Optional[bool] = None) -> None:
        """Load facexlib-layout weights (``module.`` prefixes stripped), strictly."""

        filename, url = RETINAFACE_WEIGHTS[self.network]
        if weights is None:
            path = resolve_file(filename, url=url, allow_download=allow_download)
        else:
            path = resolve_file(weights, allow_download=allow_download)
        state = load_state_dict(path)
        for key in ('state_dict', 'params', 'model'):
            if key in state and isinstance(state[key], dict):
                state = state[key]
        state = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}
        own = self.state_dict()
        if not any(k.endswith('num_batches_tracked') for k in state):  # files saved by old torch lack them
            state.update({k: v for k, v in own.items() if k.endswith('num_batches_tracked')})
        self.load_state_dict(state, strict=True)

    # ------------------------------------------------------------------ network
    def forward_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network outputs for mean-subtracted BGR input ``B x 3 x H x W``: box regressions ``B x P x 4``, face
        probabilities ``B x P`` (softmax, class 1) and landmark regressions ``B x P x 10``."""
        feats = self.body(x)
        feats = list(feats.values()) if isinstance(feats, dict) else feats
        fpn = self.fpn(feats)
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, feats)], dim=1)
        landm = torch.cat([head(f) for head, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, F.softmax(conf, dim=-1)[..., 1], landm

    def _priors_for(self, h: int, w: int, device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._priors:
            if len(self._priors) > 16:
                self._priors.clear()
            self._priors[key] = prior_boxes(h, w, device=device)
        return self._priors[key]

    def _detect_batch(self, images: list[np.ndarray]) -> list[FaceDetections]:
        param = next(self.parameters())
        h, w = images[0].shape[:2]
        batch = torch.from_numpy(np.stack(images)).to(param.device)  # B x H x W x 3 RGB uint8
        x = batch.flip(-1).permute(0, 3, 1, 2).to(param.dtype)  # BGR, 0..255
        x = x - torch.tensor(BGR_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        loc, scores, landm = self.forward_raw(x)
        priors = self._priors_for(h, w, param.device)
        scale = torch.tensor([w, h], dtype=torch.float32, device=param.device)
        boxes = decode_boxes(loc.float(), priors) * scale.repeat(2)
        points = decode_landmarks(landm.float(), priors) * scale
        out = []
        for b in range(len(images)):
            keep = scores[b] > self.conf_threshold
            dets = FaceDetections(boxes[b][keep].cpu().numpy(), scores[b][keep].float().cpu().numpy(),
                                  points[b][keep].cpu().numpy())
            out.append(nms_detections(dets, self.nms_threshold))
        return out
