"""facexlib's face-parsing networks (ParseNet, BiSeNet) behind the weight resolver.

facexlib's own ``init_parsing_model`` downloads its weights into site-packages; here the same architectures are
built from facexlib and their official files are found by :func:`portraitisr.weights.resolve_file`
(local path, ``$PORTRAITISR_HOME``, facexlib's weights folder, ...; downloaded only when downloads are allowed).
Release files and input conventions: facexlib ``facexlib/parsing/__init__.py`` (``init_parsing_model``) and
``inference/inference_parsing.py`` / ``inference_parsing_parsenet.py`` (BiSeNet: ImageNet mean/std; ParseNet:
mean = std = 0.5; both at 512x512, 19 CelebAMask-HQ classes).
"""
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import FACE_PARSERS
from portraitisr.weights import load_state_dict, resolve_file

FACEXLIB_PARSING_WEIGHTS = {
    'bisenet': {'filename': 'parsing_bisenet.pth',
                'url': 'https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth'},
    'parsenet': {'filename': 'parsing_parsenet.pth',
                 'url': 'https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth'},
}
_NORMALISATION = {'bisenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  'parsenet': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
NUM_CLASSES = 19  # CelebAMask-HQ labels (background, skin, brows, eyes, ..., hair, hat)


def _build_network(arch: str) -> nn.Module:
    if arch == 'bisenet':
        from facexlib.parsing.bisenet import BiSeNet
        return BiSeNet(num_class=NUM_CLASSES)
    from facexlib.parsing.parsenet import ParseNet
    return ParseNet(in_size=512, out_size=512, parsing_ch=NUM_CLASSES)


@FACE_PARSERS.register_module()
class FacexlibFaceParser(nn.Module):
    """Aligned faces ``B x 3 x H x W`` RGB in [0, 1] -> class probabilities ``B x 19 x H x W`` (softmax).

    The face is resized to the network's 512x512 (bilinear), parsed, and the logits resized back.

    Args:
        arch: ``'bisenet'`` or ``'parsenet'``.
        weights: weight spec for the resolver; ``None`` means facexlib's official release file.
        pretrained: ``False`` builds a random network (tests of the plumbing only).
        input_size: side the face is resized to; 512 (facexlib's) unless a smaller BiSeNet input is wanted
            (fully convolutional; ParseNet's architecture is fixed to 512).
    Raises:
        WeightsNotFoundError: (from the resolver) the weights are nowhere on disk and downloads are off.
    """

    def __init__(self, arch: str = 'bisenet', weights: Optional[Any] = None, pretrained: bool = True,
                 input_size: int = 512) -> None:
        super().__init__()
        if arch not in FACEXLIB_PARSING_WEIGHTS:
            raise ValueError(f'arch must be one of {sorted(FACEXLIB_PARSING_WEIGHTS)}, got {arch!r}')
        if input_size % 32 or (arch == 'parsenet' and input_size != 512):
            raise ValueError(f'input_size must be a multiple of 32 (BiSeNet) or 512 (ParseNet), got {input_size}')
        self.input_size = input_size
        self.arch = arch
        self.net = _build_network(arch)
        self.weights_path: Optional[str] = None
        if pretrained:
            path = resolve_file(FACEXLIB_PARSING_WEIGHTS[arch] if weights is None else weights)
            self.net.load_state_dict(load_state_dict(path), strict=True)
            self.weights_path = str(path)
        mean, std = _NORMALISATION[arch]
        self.register_buffer('mean', torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.num_classes = NUM_CLASSES
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> 'FacexlibFaceParser':
        return super().train(False)  # frozen, inference-only (BatchNorm statistics must not move)

    @torch.no_grad()
    def forward(self, faces: Tensor) -> Tensor:
        size = faces.shape[-2:]
        x = F.interpolate(faces.float(), size=(self.input_size, self.input_size), mode='bilinear',
                          align_corners=False)
        logits = self.net((x - self.mean) / self.std)[0]  # BiSeNet: (out, out16, out32); ParseNet: (mask, img)
        logits = F.interpolate(logits, size=size, mode='bilinear', align_corners=False)
        return logits.softmax(dim=1)
