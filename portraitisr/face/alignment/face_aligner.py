"""Face alignment to a 5-point template and paste-back, in torch (kornia), differentiable.

The maths follow facexlib's ``FaceRestoreHelper`` (``align_warp_face``, ``get_inverse_affine`` and
``paste_faces_to_input_image``) so that results match it to uint8 rounding, while staying batched over faces
and differentiable w.r.t. the images, the faces, the background and (``estimator='lstsq'``) the landmarks.
"""
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import filter2d_separable
from kornia.geometry.transform import warp_affine
from kornia.morphology import erosion
from torch import nn

from portraitisr.registry import FACE_ALIGNERS
from .similarity import estimate_similarity_lmeds, estimate_similarity_lstsq
from .templates import get_template

# OpenCV's fixed kernels for GaussianBlur with sigma <= 0 and an odd ksize <= 7 (getGaussianKernel).
_CV2_SMALL_GAUSSIAN = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
}
_BORDER_MODES = {'constant': 'fill', 'reflect101': 'reflection', 'replicate': 'border', 'zeros': 'zeros'}


def cv2_gaussian_kernel1d(ksize: int, sigma: float = 0.0, dtype=torch.float64, device=None) -> torch.Tensor:
    """``cv2.getGaussianKernel(ksize, sigma)`` as a tensor (including OpenCV's rule for ``sigma <= 0``)."""
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f'ksize must be odd and positive, got {ksize}')
    if sigma <= 0 and ksize in _CV2_SMALL_GAUSSIAN:
        return torch.tensor(_CV2_SMALL_GAUSSIAN[ksize], dtype=dtype, device=device)
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    kernel = torch.exp(-x * x / (2 * sigma * sigma))
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def cv2_gaussian_blur(image: torch.Tensor, ksize: int, sigma: float = 0.0) -> torch.Tensor:
    """``cv2.GaussianBlur(image, (ksize, ksize), sigma)`` (border REFLECT_101) for ``B x C x H x W`` tensors."""
    if ksize == 1:
        return image
    kernel = cv2_gaussian_kernel1d(ksize, sigma, dtype=image.dtype, device=image.device)[None]
    half = ksize // 2
    border = 'reflect' if half < min(image.shape[-2:]) else 'replicate'
    return filter2d_separable(image, kernel, kernel, border_type=border)


def cv2_erode(image: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """``cv2.erode(image, np.ones((kh, kw)))`` with OpenCV's default anchor and border (pixels outside ignored).

    The flat rectangle is separable, so it runs as a row then a column erosion (kornia), which keeps memory at
    ``k`` rather than ``k^2`` image-sized buffers under autograd. An empty kernel is OpenCV's default 3 x 3.
    """
    if kh <= 0 or kw <= 0:
        kh = kw = 3
    out = image
    if kw > 1:
        out = erosion(out, torch.ones(1, kw, dtype=image.dtype, device=image.device))
    if kh > 1:
        out = erosion(out, torch.ones(kh, 1, dtype=image.dtype, device=image.device))
    return out


def invert_affine(matrices: torch.Tensor) -> torch.Tensor:
    """``cv2.invertAffineTransform`` for ``N x 2 x 3`` matrices (differentiable)."""
    a, b, tx = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    c, d, ty = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    itx = -(ia * tx + ib * ty)
    ity = -(ic * tx + id_ * ty)
    return torch.stack([torch.stack([ia, ib, itx], -1), torch.stack([ic, id_, ity], -1)], -2)


def paste_matrices(matrices: torch.Tensor, upscale_factor: float = 1) -> torch.Tensor:
    """Face -> (upscaled) image matrices as facexlib builds them: ``inv(M) * s``, plus ``0.5 * s`` when s > 1."""
    inv = invert_affine(matrices) * upscale_factor
    if upscale_factor > 1:
        inv = inv + torch.tensor([[0.0, 0.0, 0.5 * upscale_factor]] * 2, dtype=inv.dtype, device=inv.device)
    return inv


def _as_tensor(x, device=None, dtype=None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x).to(device=device, dtype=dtype)


@FACE_ALIGNERS.register_module()
class FaceAligner(nn.Module):
    """Similarity alignment of faces to a 5-point template, and facexlib-style paste-back.

    Args:
        template: ``'ffhq512'`` (facexlib), ``'arcface112'`` (insightface) or a ``5 x 2`` array of (x, y).
        output_size: side of the square face the template is scaled to (default: the template's own size;
            required for an array template unless ``template_size`` is given).
        crop_ratio: ``(h, w)`` >= 1, facexlib's rule for crops larger than the square face.
        estimator: ``'lmeds'`` (exactly ``cv2.estimateAffinePartial2D(..., cv2.LMEDS)``, outside autograd) or
            ``'lstsq'`` (closed-form least squares in torch, differentiable w.r.t. the landmarks).
        border_value: fill colour of the crop outside the image, **RGB** in 0-255 (divided by 255). The default
            is facexlib's grey ``borderValue=(135, 133, 132)``, which is BGR there, written as RGB.
        border_mode: ``'constant'`` (fill with ``border_value``), ``'reflect101'`` (cv2 BORDER_REFLECT_101),
            ``'replicate'`` or ``'zeros'``.
        template_size: the square size an array ``template`` was designed for (scaled to ``output_size``).
    """

    def __init__(self,
                 template: Union[str, np.ndarray, Sequence] = 'ffhq512',
                 output_size: Optional[int] = None,
                 crop_ratio: Sequence[float] = (1, 1),
                 estimator: str = 'lmeds',
                 border_value: Sequence[float] = (132, 133, 135),
                 border_mode: str = 'constant',
                 template_size: Optional[int] = None):
        super().__init__()
        if estimator not in ('lmeds', 'lstsq'):
            raise ValueError(f"estimator must be 'lmeds' or 'lstsq', got {estimator!r}")
        if border_mode not in _BORDER_MODES:
            raise ValueError(f'border_mode must be one of {sorted(_BORDER_MODES)}, got {border_mode!r}')
        points, crop_size = get_template(template, output_size, crop_ratio, base_size=template_size)
        self.template_points = points  # float64 numpy, K x 2, in crop pixels
        self.crop_size: Tuple[int, int] = crop_size  # (h, w)
        self.estimator = estimator
        self.border_mode = border_mode
        self.border_value = tuple(float(v) for v in border_value)

    def extra_repr(self) -> str:
        return (f'crop_size={self.crop_size}, estimator={self.estimator!r}, border_mode={self.border_mode!r}, '
                f'border_value={self.border_value}')

    def template(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """The template points (``K x 2``) in crop pixel coordinates."""
        return torch.as_tensor(self.template_points, dtype=dtype, device=device)

    # ------------------------------------------------------------------ estimation
    def estimate(self, landmarks: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
        """``B x 5 x 2`` landmarks (input pixels) -> ``B x 2 x 3`` matrices mapping input pixels to crop pixels.

        The result has the landmarks' floating dtype and device (float64 for numpy input).
        """
        if isinstance(landmarks, np.ndarray):
            landmarks = torch.from_numpy(np.ascontiguousarray(landmarks, dtype=np.float64))
        landmarks = torch.as_tensor(landmarks)
        if landmarks.dim() == 2:
            landmarks = landmarks[None]
        dtype = landmarks.dtype if landmarks.dtype.is_floating_point else torch.float64
        landmarks = landmarks.to(dtype)
        if landmarks.shape[-2:] != self.template_points.shape:
            raise ValueError(f'landmarks must be B x {self.template_points.shape[0]} x 2, got {tuple(landmarks.shape)}')
        if landmarks.shape[0] == 0:
            return landmarks.new_zeros(0, 2, 3)
        if self.estimator == 'lmeds':
            matrices = estimate_similarity_lmeds(landmarks, self.template_points)
            return torch.from_numpy(matrices).to(device=landmarks.device, dtype=dtype)
        template = self.template(dtype=dtype, device=landmarks.device)
        return estimate_similarity_lstsq(landmarks, template)

    def _matrices(self, matrices_or_landmarks) -> torch.Tensor:
        x = matrices_or_landmarks
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        x = torch.as_tensor(x)
        if x.dim() == 2:
            x = x[None]
        if tuple(x.shape[-2:]) == (2, 3):
            return x
        return self.estimate(x)

    # ------------------------------------------------------------------ alignment
    def _fill_value(self, channels: int, dtype, device) -> torch.Tensor:
        value = torch.tensor(self.border_value, dtype=dtype, device=device) / 255.0
        if value.numel() == channels:
            return value
        if value.numel() == 1:
            return value.expand(channels)
        if channels == 1:
            return value.mean(0, keepdim=True)
        return torch.cat([value, value.new_ones(channels - value.numel())])[:channels]

    def align(self, images: torch.Tensor, matrices_or_landmarks, image_index=None) -> torch.Tensor:
        """Warp faces out of ``images`` (``B x C x H x W`` in [0, 1]) into ``N x C x h x w`` crops.

        Args:
            images: the source images.
            matrices_or_landmarks: ``N x 2 x 3`` matrices (from :meth:`estimate`) or ``N x 5 x 2`` landmarks.
            image_index: ``(N,)`` index of the image each face comes from; ``None`` means face ``i`` is in
                image ``i`` (then ``N == B``).
        """
        matrices = self._matrices(matrices_or_landmarks)
        n = matrices.shape[0]
        h, w = self.crop_size
        channels = images.shape[1]
        if n == 0:
            return images.new_zeros(0, channels, h, w)
        index = self._image_index(image_index, n, images.shape[0], images.device)
        src = images[index] if not (image_index is None and n == images.shape[0]) else images
        matrices = matrices.to(device=images.device, dtype=images.dtype)
        mode = _BORDER_MODES[self.border_mode]
        fill = self._fill_value(channels, images.dtype, images.device) if mode == 'fill' else None
        return warp_affine(src, matrices, dsize=(h, w), mode='bilinear', padding_mode=mode, align_corners=True,
                           fill_value=fill)

    def forward(self, images: torch.Tensor, matrices_or_landmarks, image_index=None) -> torch.Tensor:
        return self.align(images, matrices_or_landmarks, image_index)

    def validity_mask(self, images: torch.Tensor, matrices: torch.Tensor, image_index=None) -> torch.Tensor:
        """``N x 1 x h x w``: 1 where the crop samples the image, 0 in the border fill.

        Exactly what bilinear sampling of an all-ones image with zero padding gives (a 1-px linear ramp at the
        edge), computed in closed form from where each crop pixel lands in its image.
        """
        matrices = self._matrices(matrices)
        n = matrices.shape[0]
        h, w = self.crop_size
        if n == 0:
            return images.new_zeros(0, 1, h, w)
        self._image_index(image_index, n, images.shape[0], images.device)
        height, width = images.shape[-2:]
        inv = invert_affine(matrices.to(device=images.device, dtype=torch.float64))
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=images.device),
                                torch.arange(w, dtype=torch.float64, device=images.device), indexing='ij')
        x = inv[:, 0, 0, None, None] * xs + inv[:, 0, 1, None, None] * ys + inv[:, 0, 2, None, None]
        y = inv[:, 1, 0, None, None] * xs + inv[:, 1, 1, None, None] * ys + inv[:, 1, 2, None, None]

        def coverage(t, size):
            return (1 - torch.clamp(-t, min=0) - torch.clamp(t - (size - 1), min=0)).clamp(0, 1)

        return (coverage(x, width) * coverage(y, height))[:, None].to(images.dtype)

    @staticmethod
    def _image_index(image_index, n: int, batch: int, device) -> torch.Tensor:
        if image_index is None:
            if n != batch:
                raise ValueError(f'{n} faces for {batch} images: pass image_index to say which image each face is in')
            return torch.arange(n, device=device)
        index = _as_tensor(image_index, device=device, dtype=torch.long).reshape(-1)
        if index.numel() != n:
            raise ValueError(f'image_index has {index.numel()} entries for {n} faces')
        if n and (int(index.min()) < 0 or int(index.max()) >= batch):
            raise ValueError(f'image_index out of range for {batch} images: {index.tolist()}')
        return index

    def region_mask(self, matrices, out_size: Tuple[int, int], image_index=None, batch_size: Optional[int] = None,
                    scale: float = 1) -> torch.Tensor:
        """Binary mask of the aligned crops' footprints in the images: ``B x 1 x H' x W'`` float in {0, 1}.

        A pixel is 1 when its centre maps inside the crop of one of its image's faces (the union over faces);
        HeadsUp's face mask ``M`` (paper section 2.3). ``out_size`` may be a scaled grid, e.g. the latent
        resolution with ``scale = 1/8``: grid pixel ``(u, v)`` has its centre at image pixel
        ``((u + 0.5) / scale - 0.5, (v + 0.5) / scale - 0.5)``.

        Args:
            matrices: ``N x 2 x 3`` image -> crop matrices (or ``N x 5 x 2`` landmarks).
            out_size: ``(H', W')`` of the mask.
            image_index: ``(N,)`` image of each face; ``None`` means face ``i`` is in image ``i``.
            batch_size: number of images ``B`` (default ``N``, or ``max(image_index) + 1``).
            scale: size of the mask grid relative to the image the matrices refer to.
        """
        matrices = self._matrices(matrices)
        n = matrices.shape[0]
        if batch_size is None:
            batch_size = n if image_index is None else (int(torch.as_tensor(image_index).max()) + 1 if n else 0)
        index = self._image_index(image_index, n, batch_size, matrices.device)
        height, width = out_size
        mask = torch.zeros(batch_size, 1, height, width, dtype=torch.float32, device=matrices.device)
        if n == 0:
            return mask
        m = matrices.detach().to(torch.float64)
        ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=m.device),
                                torch.arange(width, dtype=torch.float64, device=m.device), indexing='ij')
        xs, ys = (xs + 0.5) / scale - 0.5, (ys + 0.5) / scale - 0.5
        cx = m[:, 0, 0, None, None] * xs + m[:, 0, 1, None, None] * ys + m[:, 0, 2, None, None]
        cy = m[:, 1, 0, None, None] * xs + m[:, 1, 1, None, None] * ys + m[:, 1, 2, None, None]
        crop_h, crop_w = self.crop_size
        inside = (cx >= 0) & (cx <= crop_w - 1) & (cy >= 0) & (cy <= crop_h - 1)
        mask[:, 0].index_add_(0, index, inside.float())  # faces of one image add up; clamp to the union
        return mask.clamp_(max=1)

    # ------------------------------------------------------------------ paste-back
    def square_mask(self, matrices: torch.Tensor, out_size: Tuple[int, int], upscale_factor: float = 1,
                    face_size: Optional[Tuple[int, int]] = None, return_eroded: bool = False):
        """facexlib's soft square paste mask of each face in the (upscaled) image: ``N x 1 x H' x W'``.

        ``warp(ones(face), inv)``, eroded by ``int(2s)``; ``w_edge = int(sqrt(area)) // 20``; eroded again by
        ``2 w_edge`` and blurred with ``GaussianBlur(2 w_edge + 1, sigma=0)``. With ``return_eroded`` also the
        first (hard-edged) erosion, which facexlib multiplies into the pasted face.

        Args:
            matrices: ``N x 2 x 3`` image -> crop matrices (as from :meth:`estimate`).
            out_size: ``(H', W')`` of the (upscaled) image.
            upscale_factor: ``s``, the upscaling of the output relative to the image the matrices refer to.
            face_size: ``(h, w)`` of the faces; defaults to the crop size.
        """
        matrices = self._matrices(matrices)
        face_size = tuple(face_size) if face_size is not None else self.crop_size
        dtype = matrices.dtype if matrices.dtype.is_floating_point else torch.float32
        inv = paste_matrices(matrices.to(torch.float64), upscale_factor).to(dtype)
        soft, eroded = [], []
        for i in range(matrices.shape[0]):
            soft_i, eroded_i = self.square_mask_of_face(inv[i:i + 1], face_size, tuple(out_size), upscale_factor)
            soft.append(soft_i)
            eroded.append(eroded_i)
        if not soft:
            empty = torch.zeros(0, 1, *out_size, dtype=dtype, device=matrices.device)
            return (empty, empty) if return_eroded else empty
        soft, eroded = torch.cat(soft), torch.cat(eroded)
        return (soft, eroded) if return_eroded else soft

    @staticmethod
    def square_mask_of_face(inv: torch.Tensor, face_size: Tuple[int, int], out_size: Tuple[int, int],
                            upscale_factor: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """(soft mask, first hard-edged erosion) of one face, each ``1 x 1 x H' x W'`` in [0, 1], from its
        ``1 x 2 x 3`` face -> image matrix (facexlib ``paste_faces_to_input_image``, ``use_parse=False``)."""
        ones = torch.ones(1, 1, *face_size, dtype=inv.dtype, device=inv.device)
        mask = warp_affine(ones, inv, dsize=out_size, mode='bilinear', padding_mode='zeros', align_corners=True)
        k = int(2 * upscale_factor)
        mask = cv2_erode(mask, k, k)
        w_edge = int(float(mask.detach().sum()) ** 0.5) // 20
        soft = cv2_gaussian_blur(cv2_erode(mask, 2 * w_edge, 2 * w_edge), 2 * w_edge + 1)
        return soft, mask

    @staticmethod
    def parse_soft_mask(mask: torch.Tensor) -> torch.Tensor:
        """facexlib's use_parse treatment of a ``N x 1 x h x w`` face mask in [0, 1], at 512 x 512:
        ``GaussianBlur(101, sigma=11)`` twice, a 10-px border set to 0, then back to the face size."""
        h, w = mask.shape[-2:]
        m = mask if (h, w) == (512, 512) else F.interpolate(mask, size=(512, 512), mode='bilinear',
                                                            align_corners=False, antialias=True)
        m = cv2_gaussian_blur(cv2_gaussian_blur(m, 101, 11.0), 101, 11.0)
        frame = torch.zeros_like(m[:1])
        frame[..., 10:-10, 10:-10] = 1
        m = m * frame
        if (h, w) != (512, 512):
            m = F.interpolate(m, size=(h, w), mode='bilinear', align_corners=False)
        return m

    def paste(self, background: torch.Tensor, faces: torch.Tensor, matrices, image_index=None,
              upscale_factor: float = 1, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Paste ``faces`` back into ``background`` (facexlib ``paste_faces_to_input_image`` maths).

        Args:
            background: ``B x C x H' x W'``, the (upscaled) images, ``H' = int(H * s)``; channels beyond the
                faces' (e.g. alpha) are kept as they are.
            faces: ``N x 3 x h x w`` (restored) crops, in the same crop geometry as :meth:`align`'s output.
            matrices: ``N x 2 x 3`` image -> crop matrices (or ``N x 5 x 2`` landmarks).
            image_index: ``(N,)`` image of each face; ``None`` means face ``i`` goes into image ``i``.
            upscale_factor: ``s``.
            mask: optional ``N x 1 x h x w`` parsing mask in [0, 1] (facexlib ``use_parse``), which replaces the
                square mask: blurred (see :meth:`parse_soft_mask`), warped, and the face is not eroded.

        Faces are composited one after the other, as facexlib does, so a later face overwrites an earlier
        one where they overlap. Differentiable w.r.t. ``background``, ``faces`` and ``mask``.
        """
        matrices = self._matrices(matrices)
        n = matrices.shape[0]
        if faces.shape[0] != n:
            raise ValueError(f'{faces.shape[0]} faces for {n} matrices')
        index = self._image_index(image_index, n, background.shape[0], background.device)
        if n == 0:
            return background
        dtype = background.dtype
        out_size = tuple(background.shape[-2:])
        face_size = tuple(faces.shape[-2:])
        matrices = matrices.to(device=background.device)
        inv = paste_matrices(matrices.to(torch.float64), upscale_factor).to(dtype)
        faces = faces.to(dtype)
        parse = None if mask is None else self.parse_soft_mask(mask.to(dtype))
        c = faces.shape[1]
        images = list(background.unbind(0))
        for i in range(n):  # one face at a time: memory stays at one full-size warp per face
            warped = warp_affine(faces[i:i + 1], inv[i:i + 1], dsize=out_size, mode='bilinear', padding_mode='zeros',
                                 align_corners=True)[0]
            if parse is None:
                soft, eroded = self.square_mask_of_face(inv[i:i + 1], face_size, out_size, upscale_factor)
                soft, pasted = soft[0], eroded[0] * warped
            else:
                soft = warp_affine(parse[i:i + 1], inv[i:i + 1], dsize=out_size, mode='bilinear',
                                   padding_mode='zeros', align_corners=True)[0]
                pasted = warped
            b = int(index[i])
            current = images[b]
            blended = soft * pasted + (1 - soft) * current[:c]
            images[b] = torch.cat([blended, current[c:]], 0) if current.shape[0] > c else blended
        return torch.stack(images, 0)
