"""RAM's input preprocessing as OSEDiff and SeeSR's DAPE run it: squash to 384 x 384, ImageNet normalisation.

OSEDiff tags with ``ram_transforms = Compose([Resize((384, 384)), Normalize(mean=[0.485, 0.456, 0.406],
std=[0.229, 0.224, 0.225])])`` applied to a ``B x 3 x H x W`` float tensor in [0, 1] (cswry/OSEDiff
``test_osediff.py`` lines 22-25, used on the upscaled LQ at line 31; ``train_osediff.py`` lines 227-230, used on
the GT at line 271). DAPE was trained on the same transform (cswry/SeeSR ``basicsr/data/dape_dataset.py`` lines
51-53). Consequences:

* the size is ``(384, 384)``, not a short side: a non-square image is squashed to a square, aspect ratio not kept;
* the resize is torchvision's tensor resize, i.e. ``F.interpolate(mode='bilinear', align_corners=False)``;
* **antialiasing**: both repositories pin torch 2.0.1, i.e. torchvision 0.15, where a tensor ``Resize`` without an
  ``antialias`` argument does *not* antialias (its default ``'warn'`` means ``None``, "False for Tensors";
  torchvision made ``True`` the default in 0.17). So DAPE was trained and OSEDiff was tested without
  antialiasing, which is the default here (``antialias=False``); ``antialias=True`` gives what the same scripts
  compute under torchvision >= 0.17, and is closer to upstream RAM's PIL-based ``get_transform``
  (xinyu1205/recognize-anything ``ram/transform.py``: ``Resize((384, 384))`` on a PIL image, then ``ToTensor`` and
  the same ``Normalize``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'ram_preprocess']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def ram_preprocess(images: Tensor, size: int = 384, antialias: bool = False) -> Tensor:
    """``B x 3 x H x W`` RGB in [0, 1] -> ``B x 3 x size x size``, bilinearly resized and ImageNet-normalised.

    The result keeps the input's dtype and device (OSEDiff casts it to the tagger's dtype afterwards).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'expected B x 3 x H x W RGB images, got shape {tuple(images.shape)}')
    if not images.is_floating_point():
        raise TypeError(f'expected float images in [0, 1], got {images.dtype}')
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode='bilinear', align_corners=False, antialias=antialias)
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
