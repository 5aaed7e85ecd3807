"""Masking the facial region of an LR face from its landmarks (IDFSR section 3.1, "Corrupted ID Masking").

IDFSR "roughly detect[s] the facial region in the LR image and appl[ies] masking", so that the network cannot copy
the unreliable identity cues of an extremely degraded face and must take them from the reference and the identity
embedding, while the background stays as a constraint. The paper does not give the mask's shape; ours (stated, our
choice) is an ellipse in the face's own frame, computed from the five landmarks:

* ``e`` = midpoint of the eyes, ``m`` = midpoint of the mouth corners, ``d = |m - e|`` (eye-to-mouth distance);
* centre ``c = (e + m) / 2 + offset * d`` along the face's vertical axis ``v = (m - e) / d`` (``offset`` 0);
* semi-axes ``width * d`` across (along ``u``, ``v`` turned by -90 degrees: the eye line of an upright face) and
  ``height * d`` along ``v``; defaults ``width = 1.0``, ``height = 1.3``.

On the FFHQ 512 template (``d`` = 131 px, ``c`` = (257, 306)) the default spans x 126-388 and y 136-476: eyebrows
to chin and cheek to cheek, the region whose identity cues a x8-x16 LR corrupts. The ellipse rotates and scales with
the face. A pixel is masked when its centre lies inside (a hard 0/1 mask, like the paper's binary masking).
"""
from typing import Tuple, Union

import torch
from torch import Tensor, nn

from portraitisr.registry import MODELS

__all__ = ['face_ellipse_mask', 'FaceRegionMasker']


def face_ellipse_mask(landmarks: Tensor, size: Union[int, Tuple[int, int]], width: float = 1.0, height: float = 1.3,
                      offset: float = 0.0) -> Tensor:
    """``B x 5 x 2`` landmarks (pixels; left eye, right eye, nose, left mouth, right mouth) -> ``B x 1 x H x W``
    float mask, 1 inside the face ellipse described in the module docstring."""
    landmarks = torch.as_tensor(landmarks)
    if landmarks.dim() == 2:
        landmarks = landmarks[None]
    if landmarks.shape[-2:] != (5, 2):
        raise ValueError(f'landmarks must be B x 5 x 2, got {tuple(landmarks.shape)}')
    h, w = (size, size) if isinstance(size, int) else size
    points = landmarks.detach().double()
    eyes, mouth = points[:, :2].mean(1), points[:, 3:].mean(1)  # B x 2
    axis = mouth - eyes
    dist = axis.norm(dim=-1).clamp_min(1e-6)  # B
    v = axis / dist[:, None]
    u = torch.stack([v[:, 1], -v[:, 0]], -1)
    centre = (eyes + mouth) / 2 + offset * dist[:, None] * v
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=points.device),
                            torch.arange(w, dtype=torch.float64, device=points.device), indexing='ij')
    dx, dy = xs[None] - centre[:, 0, None, None], ys[None] - centre[:, 1, None, None]
    across = (dx * u[:, 0, None, None] + dy * u[:, 1, None, None]) / (width * dist[:, None, None])
    along = (dx * v[:, 0, None, None] + dy * v[:, 1, None, None]) / (height * dist[:, None, None])
    return (across ** 2 + along ** 2 <= 1).float()[:, None]


@MODELS.register_module()
class FaceRegionMasker(nn.Module):
    """Mask the face of ``B x C x H x W`` images from their landmarks: ``I_M = I (1 - M) + fill M``.

    Args:
        width / height / offset: the ellipse (see the module docstring); defaults 1.0, 1.3, 0.
        fill: value of the masked pixels in the images' range: 0.5 (mid-grey in [0, 1], i.e. 0 in the [-1, 1] range
            a diffusion UNet sees; our choice, the paper does not state it).

    ``forward(images, landmarks) -> (masked images, mask B x 1 x H x W)``. Differentiable w.r.t. ``images``.
    """

    def __init__(self, width: float = 1.0, height: float = 1.3, offset: float = 0.0, fill: float = 0.5) -> None:
        super().__init__()
        if width <= 0 or height <= 0:
            raise ValueError(f'width and height must be positive, got {width}, {height}')
        self.width, self.height, self.offset, self.fill = float(width), float(height), float(offset), float(fill)

    def extra_repr(self) -> str:
        return f'width={self.width}, height={self.height}, offset={self.offset}, fill={self.fill}'

    def mask(self, landmarks: Tensor, size: Union[int, Tuple[int, int]]) -> Tensor:
        """``B x 1 x H x W`` 0/1 face mask."""
        return face_ellipse_mask(landmarks, size, self.width, self.height, self.offset)

    def forward(self, images: Tensor, landmarks: Tensor) -> Tuple[Tensor, Tensor]:
        if images.dim() != 4:
            raise ValueError(f'images must be B x C x H x W, got {tuple(images.shape)}')
        mask = self.mask(landmarks, tuple(images.shape[-2:])).to(images)
        if mask.shape[0] != images.shape[0]:
            raise ValueError(f'{mask.shape[0]} landmark sets for {images.shape[0]} images')
        return images * (1 - mask) + self.fill * mask, mask
