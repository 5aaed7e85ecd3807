"""Five-point face templates (left eye, right eye, nose, left mouth, right mouth; the image's left first).

Coordinates are (x, y) pixel positions with pixel centres at integers, as OpenCV and kornia use them.
"""
from typing import Sequence, Tuple, Union

import numpy as np

#: facexlib ``FaceRestoreHelper`` template for 512 x 512 FFHQ-aligned faces.
FFHQ_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)

#: insightface ``arcface_src`` template for 112 x 112 ArcFace crops.
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)

TEMPLATES = {'ffhq512': (FFHQ_512, 512), 'arcface112': (ARCFACE_112, 112)}


def _pair(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    h, w = value
    return int(h), int(w)


def get_template(template: Union[str, np.ndarray] = 'ffhq512',
                 output_size: Union[int, Sequence[int], None] = None,
                 crop_ratio: Sequence[float] = (1, 1),
                 base_size: Union[int, None] = None) -> Tuple[np.ndarray, Tuple[int, int]]:
    """A template scaled to ``output_size`` and the crop size ``(h, w)`` it belongs to.

    Args:
        template: ``'ffhq512'``, ``'arcface112'`` or a ``K x 2`` array of (x, y) points.
        output_size: side of the square face (``int``) the template is scaled to: ``template * size / base``.
            Defaults to the template's own size.
        crop_ratio: ``(h, w)`` ratios >= 1 (facexlib's rule): the crop is ``(int(size*h), int(size*w))`` and
            the points shift by ``size*(h-1)/2`` in y and ``size*(w-1)/2`` in x, so the face stays centred.
        base_size: the square size an array template was designed for (defaults to ``output_size``, i.e. no
            scaling). Ignored for named templates.

    Returns:
        ``(points, (crop_h, crop_w))`` with ``points`` a float64 ``K x 2`` array.
    """
    if isinstance(template, str):
        if template not in TEMPLATES:
            raise KeyError(f'Unknown face template {template!r}; choose from {sorted(TEMPLATES)} or pass an array')
        points, base = TEMPLATES[template]
    else:
        points = np.asarray(template, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f'A template must be K x 2 (x, y) points, got shape {points.shape}')
        base = base_size
    if output_size is None:
        if base is None:
            raise ValueError('output_size is required for an array template without base_size')
        output_size = base
    if not isinstance(output_size, (int, np.integer)):
        out_h, out_w = _pair(output_size)
        if out_h != out_w:
            raise ValueError('output_size is the side of the square face; use crop_ratio for non-square crops')
        output_size = out_h
    size = int(output_size)
    base = size if base is None else base
    ratio_h, ratio_w = crop_ratio
    if ratio_h < 1 or ratio_w < 1:
        raise ValueError(f'crop_ratio must be >= 1 (facexlib rule), got {crop_ratio}')
    points = points * (size / float(base))
    if ratio_h > 1:
        points[:, 1] += size * (ratio_h - 1) / 2
    if ratio_w > 1:
        points[:, 0] += size * (ratio_w - 1) / 2
    return points, (int(size * ratio_h), int(size * ratio_w))
