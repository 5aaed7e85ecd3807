"""4-DoF similarity (rotation, uniform scale, translation) estimation between point sets.

Both estimators map ``src`` points (e.g. detected landmarks in image pixels) to ``dst`` points (a template)
and return ``B x 2 x 3`` matrices ``[[a, -b, tx], [b, a, ty]]`` in the OpenCV / kornia convention.
"""
from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_batch_numpy(points: ArrayLike) -> np.ndarray:
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 2:
        points = points[None]
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f'Expected B x K x 2 points, got shape {points.shape}')
    return points


def estimate_similarity_lmeds(src: ArrayLike, dst: ArrayLike) -> np.ndarray:
    """``cv2.estimateAffinePartial2D(src[i], dst[i], method=cv2.LMEDS)[0]`` for every face (facexlib's solve).

    Args:
        src: ``B x K x 2`` (or ``K x 2``) source points.
        dst: ``B x K x 2`` or ``K x 2`` (shared by all faces) destination points.

    Returns:
        ``B x 2 x 3`` float64 numpy array. Computed outside autograd. When OpenCV finds no model (degenerate
        points) the least-squares solution is used for that face instead.
    """
    import cv2

    src_np = _as_batch_numpy(src)
    dst_np = _as_batch_numpy(dst)
    if dst_np.shape[0] == 1 and src_np.shape[0] != 1:
        dst_np = np.broadcast_to(dst_np, src_np.shape)
    if src_np.shape != dst_np.shape:
        raise ValueError(f'src {src_np.shape} and dst {dst_np.shape} do not match')
    out = np.empty((src_np.shape[0], 2, 3), dtype=np.float64)
    for i, (s, d) in enumerate(zip(src_np, dst_np)):
        matrix = cv2.estimateAffinePartial2D(np.ascontiguousarray(s), np.ascontiguousarray(d), method=cv2.LMEDS)[0]
        if matrix is None:
            # degenerate points (cv2 gives up): the least-squares solve still answers
            src_t, dst_t = torch.from_numpy(s.copy())[None], torch.from_numpy(d.copy())[None]
            matrix = estimate_similarity_lstsq(src_t, dst_t)[0].numpy()
        out[i] = matrix
    return out


def estimate_similarity_lstsq(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor = None) -> torch.Tensor:
    """Closed-form (weighted) least-squares similarity, differentiable w.r.t. ``src``, ``dst`` and ``weights``.

    Minimises ``sum_k w_k ||M [src_k, 1] - dst_k||^2`` over ``M = [[a, -b, tx], [b, a, ty]]``: with centred
    points ``p = src - mean``, ``q = dst - mean``, ``a = sum(p.q) / sum|p|^2``, ``b = sum(p x q) / sum|p|^2``.

    Args:
        src: ``B x K x 2`` (or ``K x 2``) points.
        dst: ``B x K x 2`` or ``K x 2`` (broadcast over the batch).
        weights: optional ``B x K`` or ``K`` non-negative weights.

    Returns:
        ``B x 2 x 3`` matrices in the promoted floating dtype of the inputs (float64 stays float64).
    """
    src = torch.as_tensor(src)
    dst = torch.as_tensor(dst)
    dtype = torch.promote_types(src.dtype, dst.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    device = src.device
    src = src.to(dtype)
    dst = dst.to(device=device, dtype=dtype)
    if src.dim() == 2:
        src = src[None]
    if dst.dim() == 2:
        dst = dst[None]
    src, dst = torch.broadcast_tensors(src, dst)
    if src.shape[-1] != 2 or src.shape[-2] < 2:
        raise ValueError(f'Expected B x K x 2 points with K >= 2, got {tuple(src.shape)}')
    if weights is None:
        w = torch.ones(src.shape[:-1], dtype=dtype, device=device)
    else:
        w = torch.as_tensor(weights).to(device=device, dtype=dtype)
        w = w.expand(src.shape[:-1])
    w = w / w.sum(-1, keepdim=True)
    src_mean = (w[..., None] * src).sum(-2)
    dst_mean = (w[..., None] * dst).sum(-2)
    p = src - src_mean[:, None]
    q = dst - dst_mean[:, None]
    norm = (w * (p * p).sum(-1)).sum(-1)
    a = (w * (p[..., 0] * q[..., 0] + p[..., 1] * q[..., 1])).sum(-1) / norm
    b = (w * (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0])).sum(-1) / norm
    tx = dst_mean[:, 0] - (a * src_mean[:, 0] - b * src_mean[:, 1])
    ty = dst_mean[:, 1] - (b * src_mean[:, 0] + a * src_mean[:, 1])
    row0 = torch.stack([a, -b, tx], dim=-1)
    row1 = torch.stack([b, a, ty], dim=-1)
    return torch.stack([row0, row1], dim=-2)
