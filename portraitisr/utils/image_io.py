"""Reading and writing image files: RGB float arrays in [0, 1], alpha kept apart, 8- and 16-bit.

Conventions (docs/command_line.md, docs/data.md): an image file becomes an :class:`ImageRecord` with ``rgb``
float32 ``H x W x 3`` in [0, 1] (RGB order, grayscale expanded to 3 channels) and ``alpha`` float32 ``H x W`` in
[0, 1] or None, so the restorer sees colour only and the alpha plane can be upscaled and written back. ``bit_depth``
(8 or 16) records how the file was quantised so that outputs can be written at the same depth.

OpenCV decodes first (it is what the metric code of the reference repositories uses, so pixel values match
theirs); Pillow is the fallback for formats OpenCV cannot read (e.g. GIF). torch is imported only by the two
tensor helpers.
"""
from __future__ import annotations

import io
import os
import threading
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import cv2
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = [
    'IMAGE_EXTENSIONS', 'DEFAULT_MAX_IMAGE_PIXELS', 'ImageReadError', 'ImageTooLargeError', 'ImageRecord',
    'max_image_pixels', 'read_image_size', 'check_image_size', 'read_image', 'decode_image', 'write_image',
    'image_to_tensor', 'tensor_to_image', 'list_images', 'output_suffix', 'unit_float_image', 'WRITE_REWRITES'
]

PathLike = Union[str, 'os.PathLike[str]']

#: Lower-case suffixes :func:`list_images` picks up (all readable by :func:`read_image`).
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png', '.ppm', '.pgm', '.tif', '.tiff', '.webp')

_EXIF_ORIENTATION = 0x0112
_ALPHA_FORMATS = ('.png', '.tif', '.tiff', '.webp')
_16BIT_FORMATS = ('.png', '.tif', '.tiff')
#: Readable suffixes :func:`write_image` cannot write, and the suffix their outputs get instead.
WRITE_REWRITES = {'.gif': '.png', '.bmp': '.png', '.ppm': '.png', '.pgm': '.png'}

#: The largest image (width x height) any reader of the library decodes unless told otherwise: 16384 x 8192, twice
#: an 8K x 8K photo and under Pillow's own hard limit (2 x ``Image.MAX_IMAGE_PIXELS``, about 179 MP). A file whose
#: header claims more is refused before a byte of pixels is decoded (a 1 KB PNG can claim 60000 x 60000 and would
#: need 43 GB as float RGB). Override per call (``max_pixels=``) or process-wide with ``PORTRAITISR_MAX_IMAGE_PIXELS``
#: (0 = no limit).
DEFAULT_MAX_IMAGE_PIXELS = 16384 * 8192


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded (empty, truncated, corrupt, or an unsupported sample type)."""


class ImageTooLargeError(ImageReadError):
    """An image file's header claims more pixels than the limit (a decompression bomb, or a photo too large)."""


@dataclass
class ImageRecord:
    """A decoded image file.

    Attributes:
        rgb: float32 ``H x W x 3``, RGB, in [0, 1].
        alpha: float32 ``H x W`` in [0, 1] (1 = opaque), or None when the file has no alpha channel.
        bit_depth: 8 or 16, the file's bits per sample.
        path: the file it was read from.
    """

    rgb: np.ndarray
    alpha: Optional[np.ndarray]
    bit_depth: int
    path: Path


# ------------------------------------------------------------------------------------------------ size limit
def max_image_pixels() -> Optional[int]:
    """The process-wide pixel limit: ``PORTRAITISR_MAX_IMAGE_PIXELS`` if set (0 = none, returned as None), else
    :data:`DEFAULT_MAX_IMAGE_PIXELS`."""
    value = os.environ.get('PORTRAITISR_MAX_IMAGE_PIXELS', '').strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        raise ValueError(f'PORTRAITISR_MAX_IMAGE_PIXELS must be a number of pixels, got {value!r}') from None
    return limit if limit > 0 else None


def _open_header(source) -> Image.Image:
    """Pillow's lazy open (header only), with its decompression-bomb check left to :func:`check_image_size`:
    Pillow raises for more than about 179 MP, which a caller with a larger limit may want to allow."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except Image.DecompressionBombError:
            pass
    with _PIL_LIMIT_LOCK:  # only reached for headers above Pillow's hard limit
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            if hasattr(source, 'seek'):
                source.seek(0)
            return Image.open(source)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


_PIL_LIMIT_LOCK = threading.Lock()


def read_image_size(source: Union[PathLike, bytes]) -> tuple[int, int]:
    """``(width, height)`` of an image file (a path or its bytes) from its header, after EXIF orientation, without
    decoding pixels.

    Raises:
        FileNotFoundError: no such file.
        ImageReadError: neither Pillow nor the header can tell the size (not an image, or a corrupt header).
    """
    name = '<bytes>' if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        if not Path(source).exists():
            raise FileNotFoundError(f'image file {source} does not exist')
        raise ImageReadError(f'cannot read image file {source}: not a file')
    try:
        with _open_header(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            width, height = im.size
            try:
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1) if im.format == 'JPEG' else 1
            except Exception:  # noqa: BLE001 - a broken EXIF block does not hide the size
                orientation = 1
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for bad headers
        raise ImageReadError(f'cannot read image file {name}: its header gives no image size '
                             f'({type(error).__name__}: {error})') from None
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: read_image swaps the sides
        width, height = height, width
    return int(width), int(height)


def _pixels(count: int) -> str:
    return f'{count / 1e6:.1f} MP' if count >= 100_000 else f'{count} pixels'


def check_image_size(width: int, height: int, name: str, max_pixels: Optional[int] = None) -> None:
    """Raise :class:`ImageTooLargeError` naming ``name`` and the limit if ``width x height`` exceeds ``max_pixels``
    (None: :func:`max_image_pixels`; 0: no limit)."""
    limit = max_image_pixels() if max_pixels is None else (max_pixels or None)
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(
            f'{name}: {width}x{height} = {_pixels(width * height)} is more than the limit of {_pixels(limit)} '
            '(a decompression bomb, or a photo too large to decode safely); raise the limit with '
            'PORTRAITISR_MAX_IMAGE_PIXELS or max_pixels= if you trust the file')


# ------------------------------------------------------------------------------------------------ reading
def _jpeg_is_complete(data: bytes) -> bool:
    """Whether JPEG bytes run from SOI to an EOI marker.

    Some OpenCV builds (4.x) decode a truncated JPEG without an error and fill the missing rows with gray, so the
    marker structure is walked instead: segments up to each start-of-scan, then the entropy-coded data (where a
    0xFF byte is always followed by 0x00, a restart marker or more 0xFF) up to the next marker, until EOI.
    Bytes appended after EOI (e.g. motion-photo trailers) do not matter.
    """
    size, pos = len(data), 2
    while pos < size:
        if data[pos] != 0xFF:  # stray bytes between segments: libjpeg skips them, so do we
            pos = data.find(b'\xff', pos)
            if pos < 0:
                return False
        while pos + 1 < size and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos + 1 >= size:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length field
            pos += 2
            continue
        if pos + 4 > size:
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], 'big')
        if marker == 0xDA:  # SOS: skip the entropy-coded data
            while True:
                pos = data.find(b'\xff', pos)
                if pos < 0 or pos + 1 >= size:
                    return False
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break
    return False


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1..8) of JPEG bytes, 1 when absent or unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:  # parses headers only, no pixel decoding
            value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a decodable image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels (first two axes H, W) into the upright view that EXIF ``orientation`` describes."""
    if orientation == 2:
        array = array[:, ::-1]
    elif orientation == 3:
        array = array[::-1, ::-1]
    elif orientation == 4:
        array = array[::-1]
    elif orientation == 5:
        array = array.swapaxes(0, 1)
    elif orientation == 6:
        array = np.rot90(array, k=-1)
    elif orientation == 7:
        array = np.rot90(array, k=-1)[::-1]
    elif orientation == 8:
        array = np.rot90(array, k=1)
    return np.ascontiguousarray(array)


_CV_LOG_LOCK = threading.Lock()


def _quiet_imdecode(data: bytes) -> Optional[np.ndarray]:
    """``cv2.imdecode(..., IMREAD_UNCHANGED)`` without OpenCV's own log lines on stderr (``[ERROR:0@..] ...
    readHeader ...`` for a corrupt file): the error our caller raises already names the file, in one line. Only
    for data whose header Pillow could not read (almost always corrupt), since the lock serialises decoding."""
    with _CV_LOG_LOCK:
        previous = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        finally:
            cv2.utils.logging.setLogLevel(previous)


def _decode_with_pil(data: bytes) -> np.ndarray:
    """Decode with Pillow into an OpenCV-style array (BGR / BGRA channel order, uint8 or uint16)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # raises on truncated data (Pillow's LOAD_TRUNCATED_IMAGES stays off)
        if im.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N'):
            return np.asarray(im).astype(np.uint16)
        if im.mode == 'I':
            array = np.asarray(im)
            if array.min() < 0 or array.max() > 65535:
                raise ImageReadError(f'32-bit integer samples outside 0..65535 ({array.min()}..{array.max()})')
            return array.astype(np.uint16)
        if im.mode == 'F':
            raise ImageReadError('floating-point images are not supported')
        has_alpha = im.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in im.info
        if im.mode in ('L', 'LA') and not (im.mode == 'L' and has_alpha):
            converted = im
        else:  # palette, CMYK, YCbCr, 1-bit, ...
            converted = im.convert('RGBA' if has_alpha else 'RGB')
        array = np.asarray(converted)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., [2, 1, 0, 3][:array.shape[2]]]  # RGB(A) -> BGR(A), as OpenCV returns
    return array


def read_image(path: PathLike, max_pixels: Optional[int] = None) -> ImageRecord:
    """Read an image file as float RGB in [0, 1] plus an optional alpha plane.

    The size in the file's header is checked against ``max_pixels`` (None: :func:`max_image_pixels`; 0: no limit)
    before any pixel is decoded.

    Handles grayscale (expanded to 3 channels), gray+alpha and RGBA (alpha split off), palette images (expanded,
    with their transparency as alpha), 8- and 16-bit samples (divided by 255 / 65535), and the EXIF orientation
    of JPEGs (pixels are returned upright).

    Returns:
        :class:`ImageRecord` with ``rgb`` float32 ``H x W x 3``, ``alpha`` float32 ``H x W`` or None,
        ``bit_depth`` 8 or 16, ``path``.

    Raises:
        FileNotFoundError: no such file.
        ImageReadError: the file is empty, truncated, corrupt or has an unsupported sample type; the message
            names the file and the reason.
        ImageTooLargeError: the header claims more pixels than the limit.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f'image file {path} does not exist') from None
    except OSError as error:
        raise ImageReadError(f'cannot read image file {path}: {error}') from error
    return decode_image(data, path, max_pixels)


def decode_image(data: bytes, name: PathLike = '<bytes>', max_pixels: Optional[int] = None) -> ImageRecord:
    """Decode the bytes of an image file (a file read already, or a member of a tar shard) as :func:`read_image`
    does, with the same checks and the same result for the same bytes.

    Args:
        data: the encoded image (JPEG, PNG, WebP, TIFF, ...).
        name: how errors name the image (a path, or a name such as ``shard/key.jpg``); ``ImageRecord.path``.
        max_pixels: as in :func:`read_image`.

    Raises:
        ImageReadError: empty, truncated or corrupt data, or an unsupported sample type.
        ImageTooLargeError: the header claims more pixels than the limit.
    """
    path = Path(name)
    if not data:
        raise ImageReadError(f'cannot read image file {path}: the file is empty (0 bytes)')

    try:
        width, height = read_image_size(data)
    except ImageReadError:
        header_known = False  # no header Pillow knows: the decoders below give the precise error
    else:
        header_known = True
        check_image_size(width, height, str(path), max_pixels)

    is_jpeg = data[:3] == b'\xff\xd8\xff'
    if is_jpeg and not _jpeg_is_complete(data):
        raise ImageReadError(f'cannot read image file {path}: the JPEG data is truncated (no end-of-image marker)')

    # IMREAD_UNCHANGED keeps alpha and 16-bit samples; it also leaves EXIF orientation alone (handled below).
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if header_known else _quiet_imdecode(data)
    if array is None:
        try:
            array = _decode_with_pil(data)
        except ImageReadError as error:
            raise ImageReadError(f'cannot read image file {path}: {error}') from None
        except Exception as error:  # noqa: BLE001 - Pillow raises many types for bad data
            raise ImageReadError(f'cannot read image file {path}: neither OpenCV nor Pillow can decode it '
                                 f'({type(error).__name__}: {error})') from error

    if array.dtype == np.uint8:
        bit_depth, scale = 8, 255.0
    elif array.dtype == np.uint16:
        bit_depth, scale = 16, 65535.0
    else:
        raise ImageReadError(f'cannot read image file {path}: unsupported sample type {array.dtype} '
                             '(only 8- and 16-bit integer images are supported)')

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    alpha: Optional[np.ndarray] = None
    if array.ndim == 2:
        rgb = np.repeat(array[..., None], 3, axis=2)
    elif array.shape[2] == 2:  # gray + alpha
        rgb, alpha = np.repeat(array[..., :1], 3, axis=2), array[..., 1]
    elif array.shape[2] == 3:
        rgb = array[..., ::-1]
    elif array.shape[2] == 4:
        rgb, alpha = array[..., 2::-1], array[..., 3]
    else:
        raise ImageReadError(f'cannot read image file {path}: {array.shape[2]} channels are not supported')

    if is_jpeg:
        orientation = _exif_orientation(data)
        rgb = _apply_orientation(rgb, orientation)
        alpha = None if alpha is None else _apply_orientation(alpha, orientation)

    # One float copy each, divided in place: ``astype(...) / scale`` would hold two float copies of a large image.
    rgb = rgb.astype(np.float32, order='C')
    rgb /= scale
    if alpha is not None:
        alpha = alpha.astype(np.float32, order='C')
        alpha /= scale
    return ImageRecord(rgb=rgb, alpha=alpha, bit_depth=bit_depth, path=path)


# ------------------------------------------------------------------------------------------------ writing
def _integer_to_unit_float(array: np.ndarray) -> np.ndarray:
    """uint8 / 255 or uint16 / 65535 as float32, divided in place (one float copy, not two)."""
    scale = 255.0 if array.dtype == np.uint8 else 65535.0
    result = array.astype(np.float32)
    result /= scale
    return result


def _to_unit_float(array: np.ndarray, what: str) -> np.ndarray:
    """Integer arrays are read by their dtype's range (uint8 / 255, uint16 / 65535); floats are clipped."""
    array = np.asarray(array)
    if array.dtype in (np.uint8, np.uint16):
        return _integer_to_unit_float(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f'{what} must be a float array in [0, 1], uint8 or uint16, got {array.dtype}')
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def write_image(path: PathLike, rgb: np.ndarray, alpha: Optional[np.ndarray] = None, bit_depth: int = 8) -> Path:
    """Write an image file atomically, creating parent folders.

    Args:
        path: destination; the suffix picks the format (``.png``, ``.jpg``, ``.tif``, ``.webp``, ...).
        rgb: ``H x W x 3`` RGB (or ``H x W`` gray), float in [0, 1] (clipped), or uint8 / uint16 at full range
            (written as they are when their type is the file's, ``bit_depth`` 8 / 16).
        alpha: optional ``H x W`` (or ``H x W x 1``) alpha in the same conventions; needs PNG, TIFF or WebP.
        bit_depth: 8 or 16 bits per sample; 16 needs PNG or TIFF.

    Returns:
        The path written. The bytes are encoded first and then moved into place with ``os.replace``, so a reader
        never sees a half-written file and a failed write leaves any previous file untouched.

    Raises:
        ValueError: bad shapes, bit depth, or a format that cannot store alpha / 16 bits (nothing is dropped
            silently).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if bit_depth not in (8, 16):
        raise ValueError(f'bit_depth must be 8 or 16, got {bit_depth}')
    if bit_depth == 16 and suffix not in _16BIT_FORMATS:
        raise ValueError(f'{path}: {suffix or "no suffix"} cannot store 16-bit samples; use {_16BIT_FORMATS}')
    if alpha is not None and suffix not in _ALPHA_FORMATS:
        raise ValueError(f'{path}: {suffix or "no suffix"} cannot store alpha; use one of {_ALPHA_FORMATS}')

    dtype, scale = (np.uint8, 255.0) if bit_depth == 8 else (np.uint16, 65535.0)
    # Samples already in the file's type are written as they are: no float copies of a large image.
    exact = np.asarray(rgb).dtype == dtype and (alpha is None or np.asarray(alpha).dtype == dtype)
    rgb = np.asarray(rgb) if exact else _to_unit_float(rgb, 'rgb')
    if rgb.ndim == 3 and rgb.shape[2] == 1:
        rgb = rgb[..., 0]
    if not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)):
        raise ValueError(f'rgb must be H x W x 3 or H x W, got shape {rgb.shape}')
    channels = [rgb[..., ::-1]] if rgb.ndim == 3 else [rgb[..., None]]  # OpenCV wants BGR
    if alpha is not None:
        alpha = np.asarray(alpha) if exact else _to_unit_float(alpha, 'alpha')
        if alpha.ndim == 3 and alpha.shape[2] == 1:
            alpha = alpha[..., 0]
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f'alpha must be H x W = {rgb.shape[:2]}, got shape {alpha.shape}')
        if rgb.ndim == 2:  # gray + alpha is not an OpenCV layout: store as BGRA
            channels = [np.repeat(channels[0], 3, axis=2)]
        channels.append(alpha[..., None])
    pixels = np.concatenate(channels, axis=2) if len(channels) > 1 else channels[0]
    if exact:
        pixels = np.ascontiguousarray(pixels)
    else:
        pixels = np.ascontiguousarray(np.round(pixels * scale).astype(dtype))

    try:
        ok, encoded = cv2.imencode(suffix, pixels)
    except cv2.error as error:
        raise ValueError(f'{path}: OpenCV cannot write {suffix or "files without a suffix"} ({error})') from error
    if not ok:
        raise ValueError(f'{path}: OpenCV failed to encode the image as {suffix}')
    del pixels  # the encoded bytes are all that is needed now

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{uuid.uuid4().hex[:8]}.tmp')  # same folder, so os.replace is atomic
    # os.open with 0o666 lets the umask decide permissions, as for any normally created file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0), 0o666)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(memoryview(encoded))  # the buffer itself: no bytes copy of a large image
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def output_suffix(path: PathLike) -> str:
    """The suffix :func:`write_image` writes for an output named after ``path``: the same, except PNG for readable
    formats it cannot write (:data:`WRITE_REWRITES`)."""
    suffix = Path(path).suffix
    return WRITE_REWRITES.get(suffix.lower(), suffix)


def unit_float_image(array: np.ndarray, what: str = 'image') -> np.ndarray:
    """A float32 copy in [0, 1] of an image array given as uint8 (/ 255), uint16 (/ 65535) or float in [0, 1].

    Nothing is clipped or guessed: other dtypes (int64, bool, ...), floats outside [0, 1] (e.g. 0..255 floats),
    NaN and infinity raise with a message that names ``what`` and says how to convert.

    Raises:
        TypeError: an unsupported dtype.
        ValueError: non-finite values or values outside [0, 1].
    """
    array = np.asarray(array)
    if array.dtype in (np.uint8, np.uint16):
        return _integer_to_unit_float(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f'{what} must be uint8, uint16 or float in [0, 1], got {array.dtype}: convert it first '
                        '(e.g. uint8 for 0..255 integers)')
    array = array.astype(np.float32)
    if array.size:
        if not np.isfinite(array).all():
            raise ValueError(f'{what} has NaN or infinite values; nothing can be restored from them')
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f'{what} values span {low:g}..{high:g}, outside [0, 1]: float images must be in [0, 1] '
                             '(divide 0..255 values by 255, or pass uint8)')
    return array


# ------------------------------------------------------------------------------------------------ tensors
def image_to_tensor(rgb: np.ndarray) -> 'torch.Tensor':
    """``H x W x 3`` (or ``H x W`` gray) array in [0, 1] -> float32 tensor ``1 x 3 x H x W`` (a copy)."""
    import torch

    array = np.asarray(rgb, dtype=np.float32)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f'expected an H x W x 3 image, got shape {array.shape}')
    return torch.from_numpy(np.array(array.transpose(2, 0, 1), order='C'))[None]  # one copy


def tensor_to_image(tensor: 'torch.Tensor') -> np.ndarray:
    """Tensor ``1 x 3 x H x W`` or ``3 x H x W`` (any float dtype or device) -> float32 ``H x W x 3`` in [0, 1].

    Values are clamped to [0, 1]; a batch of more than one image is refused (index it first).
    """
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f'expected a single image, got a batch of {tensor.shape[0]}; index it first')
        tensor = tensor[0]
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f'expected a 3 x H x W or 1 x 3 x H x W tensor, got shape {tuple(tensor.shape)}')
    # float() first: numpy has no bfloat16.
    return tensor.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy().copy()


# ------------------------------------------------------------------------------------------------ folders
def list_images(folder: PathLike, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (suffix in :data:`IMAGE_EXTENSIONS`, any case), sorted by relative path.

    Hidden files and folders (names starting with '.', e.g. macOS ``._x.jpg`` or :func:`write_image`'s temporary
    files) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise NotADirectoryError(f'{folder} is not a folder')
        raise FileNotFoundError(f'image folder {folder} does not exist')
    candidates = folder.rglob('*') if recursive else folder.iterdir()
    found = [
        p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith('.') for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())
