"""Colour correction of one-step SD outputs towards the LQ input (OSEDiff's ``--align_method``)."""
from torch import Tensor


def _mean_std(images: Tensor, eps: float = 1e-5):
    flat = images.flatten(2)
    # StableSR / OSEDiff ``calc_mean_std``: unbiased variance plus eps, per image and channel.
    return flat.mean(-1)[..., None, None], (flat.var(-1) + eps).sqrt()[..., None, None]


def adain_color_fix(images: Tensor, reference: Tensor) -> Tensor:
    """Match each channel's mean and std of ``images`` to ``reference`` (OSEDiff default).

    Both ``B x 3 x H x W`` in [0, 1] with the same size; the result is clamped to [0, 1].
    """
    mean, std = _mean_std(images)
    ref_mean, ref_std = _mean_std(reference)
    return ((images - mean) / std * ref_std + ref_mean).clamp(0, 1)


COLOR_FIXES = {'adain': adain_color_fix}
