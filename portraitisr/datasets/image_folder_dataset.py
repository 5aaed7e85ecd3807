"""Image-folder datasets: HQ images for online degradation, or paired LQ/GT folders for testing."""
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from portraitisr.face.alignment.templates import get_template
from portraitisr.registry import DATASETS
from portraitisr.utils.image_io import list_images, read_image
from .sample_images import SAMPLE_IMAGES, SAMPLE_SCHEME, is_sample, load_sample_image


def read_rgb(path: str) -> np.ndarray:
    """A file path or ``sample://NAME`` -> float32 ``H x W x 3`` RGB in [0, 1]."""
    return load_sample_image(path) if is_sample(path) else read_image(path).rgb


def _read_file_list(file_list: str, data_root: Optional[str]) -> List[str]:
    with open(file_list, encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip() and not line.startswith('#')]
    return [name if os.path.isabs(name) or data_root is None else os.path.join(data_root, name)
            for name in names]


TagMap = Dict[str, Union[str, Sequence[str]]]


def load_tags(tags: Optional[TagMap] = None, tags_file: Optional[str] = None) -> Dict[str, List[str]]:
    """Per-image tags for :class:`~portraitisr.models.TagPrompter`, keyed by file name.

    ``tags_file`` is a JSON object ``{"0001.png": ["man", "suit"], ...}`` (a comma-separated
    string per image works too), e.g. RAM/DAPE tags computed offline; ``tags`` is the same inline.
    """
    merged: Dict[str, List[str]] = {}
    if tags_file is not None:
        with open(tags_file, encoding='utf-8') as f:
            loaded = json.load(f)
        if not isinstance(loaded, dict):
            raise ValueError(f'{tags_file}: expected a JSON object {{file name: tags}}')
        merged.update(loaded)
    merged.update(tags or {})
    return {name: [t.strip() for t in value.split(',') if t.strip()] if isinstance(value, str)
            else list(value) for name, value in merged.items()}


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """PIL LANCZOS resize to ``size x size`` unless already that size (OSEDiff's face loader)."""
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image
    pil = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    return np.asarray(pil.resize((size, size), Image.LANCZOS)).astype(np.float32) / 255.0


def rotate90_augment(image: np.ndarray) -> np.ndarray:
    """BasicSR ``augment(rotation=True)``: vertical flip (p 0.5), then transpose (p 0.5)."""
    if np.random.rand() < 0.5:
        image = image[::-1]
    if np.random.rand() < 0.5:
        image = image.transpose(1, 0, 2)
    return image


def crop_flip_geometry(image: np.ndarray, crop_size: Optional[int], flip: bool,
                       crop_mode: str = 'random') -> Tuple[np.ndarray, int, int, bool]:
    """:func:`crop_and_flip` that also says where the crop came from.

    Returns:
        ``(image, top, left, flipped)``: the cropped (and maybe flipped) image, the crop's offset in
        the (padded) input, and whether it was flipped, so that point annotations can follow
        (``x -> x - left``, then ``x -> W - 1 - x`` when flipped; see :func:`flip_landmarks`).
    """
    top = left = 0
    if crop_size is not None:
        h, w = image.shape[:2]
        pad_h, pad_w = max(0, crop_size - h), max(0, crop_size - w)
        if pad_h or pad_w:
            # bottom/right padding only: coordinates in the input stay valid
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode='reflect')
            h, w = image.shape[:2]
        if crop_mode == 'random':
            top = np.random.randint(0, h - crop_size + 1)
            left = np.random.randint(0, w - crop_size + 1)
        else:
            top, left = (h - crop_size) // 2, (w - crop_size) // 2
        image = image[top:top + crop_size, left:left + crop_size]
    flipped = bool(flip and np.random.rand() < 0.5)
    if flipped:
        image = image[:, ::-1]
    return image, int(top), int(left), flipped


def crop_and_flip(image: np.ndarray, crop_size: Optional[int], flip: bool,
                  crop_mode: str = 'random') -> np.ndarray:
    """Reflect-pad to ``crop_size`` if smaller (as BasicSR), crop (random or centre), random
    horizontal flip.

    Random choices use numpy's global generator: mmengine seeds it per rank and per dataloader
    worker, and an iteration-based resume replays the dataloader, so crops are reproducible
    across resumes. A centre crop without flip draws nothing (validation sets).
    """
    return crop_flip_geometry(image, crop_size, flip, crop_mode)[0]


#: Index permutation that keeps 5-point landmarks image-left-first after a horizontal flip:
#: the eyes swap, the nose stays, the mouth corners swap.
FLIP_PERMUTATION = (1, 0, 2, 4, 3)


def flip_landmarks(points: np.ndarray, width: int) -> np.ndarray:
    """Mirror ``5 x 2`` (x, y) pixel-centre landmarks of an image ``width`` wide (``x -> W - 1 - x``)
    and reorder them (:data:`FLIP_PERMUTATION`) so they stay left eye, right eye, nose, left mouth,
    right mouth with "left" the image's left."""
    out = np.array(points, dtype=np.float32, copy=True)
    out[:, 0] = width - 1 - out[:, 0]
    return out[list(FLIP_PERMUTATION)]


def flip_box(box: np.ndarray, width: int) -> np.ndarray:
    """Mirror an ``x1, y1, x2, y2`` box given in pixel-edge coordinates (``x2`` exclusive)."""
    x1, y1, x2, y2 = [float(v) for v in box]
    return np.array([width - x2, y1, width - x1, y2], dtype=np.float32)


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


@DATASETS.register_module()
class ImageFolderDataset(Dataset):
    """HQ images for training with an online degradation (the LQ is made on the device).

    Args:
        data_root: folder of images (read recursively when ``recursive``), or None.
        file_list: optional text file of image paths (relative to ``data_root``), one per line.
        images: explicit list of paths or ``sample://NAME`` package photos.
        crop_size: crop size (None keeps the whole image).
        crop_mode: ``'random'`` (training) or ``'center'`` (validation).
        flip: random horizontal flip.
        rotate90: BasicSR's rotation augmentation (vertical flip, transpose), as OSEDiff_Face.
        resize: resize every image to ``resize x resize`` first (PIL LANCZOS; OSEDiff_Face: 512).
        repeat: how many times the list is repeated per epoch (tiny sets).
        tags / tags_file: per-image tags (see :func:`load_tags`), put in the metainfo for
            :class:`~portraitisr.models.TagPrompter`.
        aligned_face_template: the 5-point template every image is already aligned to (e.g.
            ``'ffhq512'`` for FFHQ). Items then carry ``metainfo['face_landmarks']``: the template
            scaled to the (resized) image and moved by the crop and flip, ``5 x 2`` float32 pixels
            of the GT, so face losses work on aligned-face datasets mixed with portrait datasets.
            Not combinable with ``rotate90`` (a transposed face has no image-left eye order).

    Each item: ``{'gt': 3 x H x W float in [0, 1], 'metainfo': {'path', 'index', ...}}``.
    """

    def __init__(self,
                 data_root: Optional[str] = None,
                 file_list: Optional[str] = None,
                 images: Optional[Sequence[str]] = None,
                 crop_size: Optional[int] = None,
                 crop_mode: str = 'random',
                 flip: bool = False,
                 rotate90: bool = False,
                 resize: Optional[int] = None,
                 recursive: bool = True,
                 repeat: int = 1,
                 tags: Optional[TagMap] = None,
                 tags_file: Optional[str] = None,
                 aligned_face_template: Optional[str] = None) -> None:
        super().__init__()
        paths: List[str] = list(images or [])
        if file_list is not None:
            paths += _read_file_list(file_list, data_root)
        elif data_root is not None:
            if not os.path.isdir(data_root):
                raise FileNotFoundError(f'data_root {data_root!r} is not a folder')
            paths += [str(p) for p in list_images(data_root, recursive=recursive)]
        if not paths:
            raise ValueError('The dataset is empty: give `data_root` with images, a `file_list` '
                             'or `images`')
        unknown = [p for p in paths if is_sample(p) and p[len(SAMPLE_SCHEME):] not in SAMPLE_IMAGES]
        if unknown:
            raise KeyError(f'Unknown sample images {unknown}; available: '
                           f'{[SAMPLE_SCHEME + name for name in SAMPLE_IMAGES]}')
        self.paths = paths
        if crop_mode not in ('random', 'center'):
            raise ValueError(f"crop_mode must be 'random' or 'center', got {crop_mode!r}")
        self.crop_size, self.crop_mode, self.flip, self.repeat = crop_size, crop_mode, flip, repeat
        self.rotate90, self.resize = rotate90, resize
        self.tags = load_tags(tags, tags_file)
        self.template_points: Optional[np.ndarray] = None
        if aligned_face_template is not None:
            if rotate90:
                raise ValueError('aligned_face_template cannot be combined with rotate90: a vertically '
                                 'flipped or transposed face has no image-left-first landmark order')
            points, (template_h, template_w) = get_template(aligned_face_template)
            # normalised to the template's square, so any image size scales it like get_template
            self.template_points = (points / np.array([template_w, template_h])).astype(np.float32)
        self.aligned_face_template = aligned_face_template
        self.metainfo = dict(dataset_type='image_folder', num_images=len(paths))

    def __len__(self) -> int:
        return len(self.paths) * self.repeat

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index % len(self.paths)]
        image = read_rgb(path)
        if self.resize is not None:
            image = resize_square(image, self.resize)
        landmarks = None
        if self.template_points is not None:
            # same scaling rule as get_template (points * size / base) on each axis
            landmarks = self.template_points * np.array([image.shape[1], image.shape[0]], np.float32)
        image, top, left, flipped = crop_flip_geometry(image, self.crop_size, self.flip, self.crop_mode)
        if self.rotate90:
            image = rotate90_augment(image)
        metainfo = dict(path=path, index=index, name=os.path.basename(path.rstrip('/')))
        if landmarks is not None:
            landmarks = landmarks - np.array([left, top], np.float32)
            if flipped:
                landmarks = flip_landmarks(landmarks, image.shape[1])
            metainfo['face_landmarks'] = torch.from_numpy(np.ascontiguousarray(landmarks, np.float32))
        if metainfo['name'] in self.tags:
            metainfo['tags'] = list(self.tags[metainfo['name']])
        return dict(gt=to_chw_tensor(image), metainfo=metainfo)


def upscale_like_osediff(image: np.ndarray, scale: int) -> np.ndarray:
    """OSEDiff's test-time input: the 8-bit LQ enlarged ``scale`` times with PIL bicubic."""
    from PIL import Image

    if scale == 1:
        return image
    pil = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.BICUBIC)
    return np.asarray(pil).astype(np.float32) / 255.0


@DATASETS.register_module()
class PairedImageFolderDataset(Dataset):
    """LQ images, with GT images of the same file name when ``gt_root`` is given (testing).

    Args:
        lq_root / gt_root: folders matched by file name (``gt_root`` optional).
        upscale: enlarge each LQ by this factor with PIL bicubic, as OSEDiff's test script does
            (its one-step model takes the LQ at the output size).
        tags / tags_file: per-image tags (see :func:`load_tags`), e.g. DAPE tags of the LQ.

    Each item: ``{'lq': 3 x H x W, 'gt': 3 x H x W (if any), 'metainfo': {...}}`` in [0, 1].
    """

    def __init__(self, lq_root: str, gt_root: Optional[str] = None, upscale: int = 1,
                 tags: Optional[TagMap] = None, tags_file: Optional[str] = None) -> None:
        super().__init__()
        self.upscale = int(upscale)
        self.tags = load_tags(tags, tags_file)
        if not os.path.isdir(lq_root):
            raise FileNotFoundError(f'lq_root {lq_root!r} is not a folder')
        self.lq_paths = [str(p) for p in list_images(lq_root)]
        if not self.lq_paths:
            raise ValueError(f'No images in {lq_root!r}')
        self.gt_root = gt_root
        if gt_root is not None:
            missing = [p for p in self.lq_paths
                       if not os.path.isfile(os.path.join(gt_root, os.path.basename(p)))]
            if missing:
                raise FileNotFoundError(f'{len(missing)} LQ images have no GT of the same name in '
                                        f'{gt_root!r}, e.g. {os.path.basename(missing[0])}')
        self.metainfo = dict(dataset_type='paired_folder', num_images=len(self.lq_paths))

    def __len__(self) -> int:
        return len(self.lq_paths)

    def __getitem__(self, index: int) -> dict:
        lq_path = self.lq_paths[index]
        name = os.path.basename(lq_path)
        metainfo = dict(path=lq_path, index=index, name=name)
        if name in self.tags:
            metainfo['tags'] = list(self.tags[name])
        item = dict(lq=to_chw_tensor(upscale_like_osediff(read_rgb(lq_path), self.upscale)),
                    metainfo=metainfo)
        if self.gt_root is not None:
            item['gt'] = to_chw_tensor(read_rgb(os.path.join(self.gt_root,
                                                             os.path.basename(lq_path))))
        return item
