"""Landmark-based warping of a reference face onto a target face (IDFSR section 3.2 and appendix E.1).

IDFSR aligns the facial region of a same-identity reference ``I_R`` to the LR face ``I_L`` "via affine
transformation based on the detected landmarks" (section 3.2); its appendix E.1 lists the warp as scikit-image's
``PiecewiseAffineTransform`` estimated from ``dst_points`` (target) to ``src_points`` (reference), applied with
``warp(src_img, tform, output_shape=dst_shape, mode='edge')``. Both are here, in torch, batched and differentiable
with respect to the image (and, through the per-triangle affine maps, the landmarks):

* :func:`affine_warp`: one ``2 x 3`` matrix per image (target pixel -> reference pixel is its inverse), bilinear,
  ``align_corners=True``, i.e. ``cv2.warpAffine(..., INTER_LINEAR)``'s geometry;
* :func:`piecewise_affine_warp`: scikit-image's maths. The target points are Delaunay-triangulated (scipy, as
  scikit-image does); every target pixel inside a triangle is mapped to the reference by that triangle's affine map
  (exact on its three vertices); pixels outside the mesh get the coordinate ``(-1, -1)`` as in scikit-image, which
  edge padding turns into the reference's corner pixel. Bilinear sampling with edge padding matches
  ``scipy.ndimage.map_coordinates(order=1, mode='nearest')`` that ``warp`` uses.

With only the five face landmarks the mesh covers the small eyes-nose-mouth triangle fan; ``anchors='border'`` adds
eight points on the image frame (corners and edge midpoints, mapped to the same relative positions of the reference)
so that the mesh covers the whole target image and the background moves smoothly with the face (our choice; the
paper does not say how it treats pixels outside the landmark mesh).

Point convention: ``(x, y)`` pixel coordinates with pixel centres at integers, ``B x K x 2``.
"""
import math
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine
from torch import Tensor, nn

from portraitisr.face.alignment.similarity import estimate_similarity_lstsq
from portraitisr.registry import MODELS

__all__ = ['estimate_affine_lstsq', 'affine_warp', 'border_anchors', 'delaunay_triangles', 'triangle_affines',
           'piecewise_affine_coords', 'piecewise_affine_warp', 'ReferenceWarper']

_PADDING = {'zeros': 'zeros', 'border': 'border', 'edge': 'border', 'reflection': 'reflection'}
# a pixel belongs to a triangle when all its barycentric coordinates are >= -_INSIDE_TOL (float64); scipy's
# find_simplex accepts the same tiny negative values for points on an edge
_INSIDE_TOL = 1e-9

Size = Union[int, Tuple[int, int]]


def _size(size: Size) -> Tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _points(points, like: Optional[Tensor] = None) -> Tensor:
    points = torch.as_tensor(points) if not isinstance(points, Tensor) else points
    if points.dim() == 2:
        points = points[None]
    if points.dim() != 3 or points.shape[-1] != 2:
        raise ValueError(f'points must be B x K x 2 (x, y), got {tuple(points.shape)}')
    if not points.is_floating_point():
        points = points.double()
    if like is not None:
        points = points.to(like.device)
    return points


def estimate_affine_lstsq(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares 6-DoF affine ``M`` with ``M [src, 1] ~ dst``: ``B x K x 2`` (K >= 3) -> ``B x 2 x 3``.

    Differentiable w.r.t. both point sets (normal equations, solved in the points' dtype).
    """
    src, dst = _points(src), _points(dst, src)
    src, dst = torch.broadcast_tensors(src, dst.to(src.dtype))
    if src.shape[1] < 3:
        raise ValueError(f'an affine map needs at least 3 point pairs, got {src.shape[1]}')
    ones = torch.ones_like(src[..., :1])
    design = torch.cat([src, ones], -1)  # B x K x 3
    solution = torch.linalg.lstsq(design, dst).solution  # B x 3 x 2
    return solution.transpose(-1, -2)


def affine_warp(images: Tensor, matrices: Tensor, out_size: Size, padding_mode: str = 'zeros') -> Tensor:
    """Warp ``B x C x H x W`` images by ``B x 2 x 3`` matrices mapping *image* pixels to *output* pixels.

    ``cv2.warpAffine(image, M, (w, h), flags=INTER_LINEAR, borderMode=...)``: ``'zeros'`` is ``BORDER_CONSTANT``
    (0), ``'border'`` is ``BORDER_REPLICATE``. Differentiable w.r.t. ``images`` and ``matrices``.
    """
    if padding_mode not in _PADDING:
        raise ValueError(f'padding_mode must be one of {sorted(_PADDING)}, got {padding_mode!r}')
    h, w = _size(out_size)
    return warp_affine(images, matrices.to(images), dsize=(h, w), mode='bilinear', padding_mode=_PADDING[padding_mode],
                       align_corners=True)


def border_anchors(height: int, width: int, dtype=torch.float64, device=None) -> Tensor:
    """Eight frame points of an ``height x width`` image: the corners and the edge midpoints (``8 x 2``, (x, y))."""
    x1, y1 = width - 1.0, height - 1.0
    xs = [0.0, x1 / 2, x1, 0.0, x1, 0.0, x1 / 2, x1]
    ys = [0.0, 0.0, 0.0, y1 / 2, y1 / 2, y1, y1, y1]
    return torch.tensor(list(zip(xs, ys)), dtype=dtype, device=device)


def delaunay_triangles(points: Tensor) -> Tensor:
    """``K x 2`` points -> ``T x 3`` vertex indices of their Delaunay triangulation (``scipy.spatial.Delaunay``, the
    triangulation scikit-image's ``PiecewiseAffineTransform`` uses). Not differentiable (a discrete choice)."""
    from scipy.spatial import Delaunay

    array = points.detach().double().cpu().numpy()
    return torch.from_numpy(Delaunay(array).simplices.astype(np.int64)).to(points.device)


def triangle_affines(dst: Tensor, src: Tensor, triangles: Tensor) -> Tensor:
    """Per triangle, the affine map taking its ``dst`` vertices exactly to its ``src`` vertices: ``T x 2 x 3``.

    ``dst``/``src`` ``K x 2``; differentiable w.r.t. both (a 3 x 3 solve per triangle).
    """
    d = dst[triangles]  # T x 3 x 2
    s = src[triangles].to(d.dtype)
    design = torch.cat([d, torch.ones_like(d[..., :1])], -1)  # T x 3 x 3
    return torch.linalg.solve(design, s).transpose(-1, -2)  # T x 2 x 3


def piecewise_affine_coords(dst: Tensor, src: Tensor, out_size: Size, triangles: Optional[Tensor] = None) -> Tensor:
    """For every output pixel ``(x, y)``, the reference coordinate it samples: ``H x W x 2`` (x, y) in ``src``'s
    dtype, ``(-1, -1)`` outside the mesh (scikit-image's convention).

    Args:
        dst: ``K x 2`` target (output) control points; they are triangulated.
        src: ``K x 2`` reference control points.
        out_size: ``(H, W)`` of the output.
        triangles: ``T x 3`` triangulation of ``dst`` (default :func:`delaunay_triangles`).
    """
    h, w = _size(out_size)
    triangles = delaunay_triangles(dst) if triangles is None else triangles
    affines = triangle_affines(dst, src, triangles)  # T x 2 x 3
    ys = torch.arange(h, dtype=torch.float64, device=dst.device)[:, None]  # H x 1
    xs = torch.arange(w, dtype=torch.float64, device=dst.device)[None, :]  # 1 x W
    # which triangle holds each pixel: barycentric coordinates in float64, one triangle at a time (the choice only;
    # the map itself is continuous across shared edges). The first triangle that holds a pixel keeps it.
    with torch.no_grad():
        owner = torch.full((h, w), -1, dtype=torch.long, device=dst.device)
        vertices = dst.detach().double()[triangles].cpu()  # T x 3 x 2
        for index, (v0, v1, v2) in enumerate(vertices.tolist()):
            e1, e2 = (v1[0] - v0[0], v1[1] - v0[1]), (v2[0] - v0[0], v2[1] - v0[1])
            det = e1[0] * e2[1] - e1[1] * e2[0]
            if det == 0:
                continue  # a degenerate triangle holds no pixel
            # only the pixels of the triangle's bounding box can be inside it
            x0 = max(0, math.floor(min(v0[0], v1[0], v2[0]) - 1))
            x1 = min(w, math.ceil(max(v0[0], v1[0], v2[0]) + 2))
            y0 = max(0, math.floor(min(v0[1], v1[1], v2[1]) - 1))
            y1 = min(h, math.ceil(max(v0[1], v1[1], v2[1]) + 2))
            if x0 >= x1 or y0 >= y1:
                continue
            px, py = xs[:, x0:x1] - v0[0], ys[y0:y1] - v0[1]
            b1 = (px * e2[1] - py * e2[0]) / det
            b2 = (py * e1[0] - px * e1[1]) / det
            region = owner[y0:y1, x0:x1]
            inside = (b1 >= -_INSIDE_TOL) & (b2 >= -_INSIDE_TOL) & (1 - b1 - b2 >= -_INSIDE_TOL) & (region < 0)
            region[inside] = index
    coefficients = affines.reshape(-1, 6)[owner.clamp(min=0)]  # H x W x 6: a, b, c (x row), d, e, f (y row)
    x, y = xs.to(affines.dtype), ys.to(affines.dtype)
    mapped_x = coefficients[..., 0] * x + coefficients[..., 1] * y + coefficients[..., 2]
    mapped_y = coefficients[..., 3] * x + coefficients[..., 4] * y + coefficients[..., 5]
    mapped = torch.stack([mapped_x, mapped_y], -1)
    return torch.where((owner >= 0)[..., None], mapped, torch.full_like(mapped, -1.0))


def _sample(images: Tensor, coords: Tensor, padding_mode: str) -> Tensor:
    """Bilinear sampling of ``B x C x H x W`` at pixel coordinates ``B x h x w x 2`` (x, y), centres at integers."""
    h, w = images.shape[-2:]
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=coords.dtype, device=coords.device)
    grid = (coords * scale - 1).to(images.dtype)
    return F.grid_sample(images, grid, mode='bilinear', padding_mode=_PADDING[padding_mode], align_corners=True)


def piecewise_affine_warp(images: Tensor, src_points, dst_points, out_size: Optional[Size] = None,
                          padding_mode: str = 'edge', anchors: str = 'none') -> Tensor:
    """Warp reference ``images`` so that their ``src_points`` land on ``dst_points`` (piecewise affine).

    ``skimage.transform.warp(image, PiecewiseAffineTransform().estimate(dst, src), output_shape, mode='edge')`` for
    every image of the batch (``anchors='none'``, ``padding_mode='edge'``).

    Args:
        images: ``B x C x H x W`` reference images.
        src_points: ``B x K x 2`` reference landmarks (pixels of ``images``).
        dst_points: ``B x K x 2`` target landmarks (pixels of the output).
        out_size: ``(H', W')`` of the output (default the images' size).
        padding_mode: ``'edge'`` (scikit-image ``mode='edge'``), ``'zeros'`` or ``'reflection'``.
        anchors: ``'none'`` or ``'border'`` (eight frame points added to both sets, see the module docstring).

    Returns:
        ``B x C x H' x W'``; differentiable w.r.t. ``images`` and both point sets.
    """
    if padding_mode not in _PADDING:
        raise ValueError(f'padding_mode must be one of {sorted(_PADDING)}, got {padding_mode!r}')
    if anchors not in ('none', 'border'):
        raise ValueError(f"anchors must be 'none' or 'border', got {anchors!r}")
    src, dst = _points(src_points, images), _points(dst_points, images)
    if src.shape != dst.shape or src.shape[0] not in (1, images.shape[0]):
        raise ValueError(f'src {tuple(src.shape)} and dst {tuple(dst.shape)} points must match, one set per image '
                         f'({images.shape[0]})')
    out_h, out_w = _size(out_size) if out_size is not None else tuple(images.shape[-2:])
    in_h, in_w = images.shape[-2:]
    coords = []
    for i in range(images.shape[0]):
        s, d = src[min(i, src.shape[0] - 1)], dst[min(i, dst.shape[0] - 1)]
        if anchors == 'border':
            s = torch.cat([s, border_anchors(in_h, in_w, s.dtype, s.device)])
            d = torch.cat([d, border_anchors(out_h, out_w, d.dtype, d.device)])
        coords.append(piecewise_affine_coords(d, s, (out_h, out_w)))
    return _sample(images, torch.stack(coords), padding_mode)


@MODELS.register_module()
class ReferenceWarper(nn.Module):
    """Warp a reference face onto a target face from their landmarks (a plug-in: IDFSR's ``I_W``, HeadsUp's
    reference, any model's reference input).

    Args:
        transform: ``'piecewise_affine'`` (IDFSR appendix E.1), ``'affine'`` (6-DoF least squares over the
            landmarks, section 3.2's "affine transformation") or ``'similarity'`` (4-DoF least squares).
        anchors: for ``'piecewise_affine'``: ``'border'`` (default here: the mesh covers the whole image) or
            ``'none'`` (scikit-image with the landmarks only).
        padding_mode: ``'edge'`` (scikit-image's ``mode='edge'``, cv2 ``BORDER_REPLICATE``) or ``'zeros'``.

    ``forward(reference, ref_landmarks, target_landmarks, out_size=None) -> B x C x H' x W'``: ``reference``
    ``B x C x H x W``, landmarks ``B x K x 2`` (K >= 3; the five RetinaFace points in IDFSR) in pixels of the
    reference and of the output; ``out_size`` defaults to the reference's size.
    """

    def __init__(self, transform: str = 'piecewise_affine', anchors: str = 'border',
                 padding_mode: str = 'edge') -> None:
        super().__init__()
        if transform not in ('piecewise_affine', 'affine', 'similarity'):
            raise ValueError(f"transform must be 'piecewise_affine', 'affine' or 'similarity', got {transform!r}")
        if anchors not in ('none', 'border'):
            raise ValueError(f"anchors must be 'none' or 'border', got {anchors!r}")
        if padding_mode not in _PADDING:
            raise ValueError(f'padding_mode must be one of {sorted(_PADDING)}, got {padding_mode!r}')
        self.transform, self.anchors, self.padding_mode = transform, anchors, padding_mode

    def extra_repr(self) -> str:
        return f'transform={self.transform!r}, anchors={self.anchors!r}, padding_mode={self.padding_mode!r}'

    def matrices(self, ref_landmarks: Tensor, target_landmarks: Tensor) -> Tensor:
        """``B x 2 x 3`` reference-pixel -> target-pixel matrices of the (similarity) affine transforms."""
        if self.transform == 'similarity':
            return estimate_similarity_lstsq(_points(ref_landmarks), _points(target_landmarks))
        return estimate_affine_lstsq(ref_landmarks, target_landmarks)

    def forward(self, reference: Tensor, ref_landmarks, target_landmarks, out_size: Optional[Size] = None) -> Tensor:
        if reference.dim() != 4:
            raise ValueError(f'reference must be B x C x H x W, got {tuple(reference.shape)}')
        size = _size(out_size) if out_size is not None else tuple(reference.shape[-2:])
        if self.transform == 'piecewise_affine':
            return piecewise_affine_warp(reference, ref_landmarks, target_landmarks, size, self.padding_mode,
                                         self.anchors)
        matrices = self.matrices(_points(ref_landmarks, reference), _points(target_landmarks, reference))
        return affine_warp(reference, matrices, size, self.padding_mode)
