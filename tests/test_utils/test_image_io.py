"""Tests of image reading and writing on real photos (skimage's astronaut and camera) and generated edge cases."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from skimage import data as skdata

from portraitisr.utils import image_io
from portraitisr.utils.image_io import (IMAGE_EXTENSIONS, ImageReadError, ImageRecord, image_to_tensor,
                                        list_images, read_image, tensor_to_image, write_image)
from tests.helpers.data_files import published_files, require_test_data
from tests.helpers.images import png_claiming


@pytest.fixture(scope='module')
def astronaut():
    return skdata.astronaut()  # 512 x 512 x 3 uint8 RGB portrait


@pytest.fixture(scope='module')
def camera():
    return skdata.camera()  # 512 x 512 uint8 grayscale


def _jpeg_bytes(rgb, progressive=False):
    ok, encoded = cv2.imencode('.jpg', rgb[..., ::-1], [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return encoded.tobytes()


# ------------------------------------------------------------------------------------------------ reading
def test_read_rgb_png_exact(tmp_path, astronaut):
    cv2.imwrite(str(tmp_path / 'a.png'), astronaut[..., ::-1])
    record = read_image(tmp_path / 'a.png')
    assert isinstance(record, ImageRecord)
    assert record.rgb.dtype == np.float32 and record.rgb.shape == (512, 512, 3)
    assert record.alpha is None and record.bit_depth == 8 and record.path == tmp_path / 'a.png'
    np.testing.assert_array_equal(record.rgb, astronaut.astype(np.float32) / 255)


def test_read_jpeg_matches_opencv(tmp_path, astronaut):
    (tmp_path / 'a.jpg').write_bytes(_jpeg_bytes(astronaut))
    record = read_image(str(tmp_path / 'a.jpg'))
    reference = cv2.imread(str(tmp_path / 'a.jpg'))[..., ::-1]
    np.testing.assert_array_equal(record.rgb, reference.astype(np.float32) / 255)
    assert record.rgb.min() >= 0.0 and record.rgb.max() <= 1.0


def test_read_grayscale_expands_to_three_channels(tmp_path, camera):
    cv2.imwrite(str(tmp_path / 'g.png'), camera)
    record = read_image(tmp_path / 'g.png')
    assert record.rgb.shape == (512, 512, 3) and record.alpha is None
    for c in range(3):
        np.testing.assert_array_equal(record.rgb[..., c], camera.astype(np.float32) / 255)


def test_read_rgba_splits_alpha(tmp_path, astronaut):
    alpha = np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))
    Image.fromarray(np.dstack([astronaut, alpha]), 'RGBA').save(tmp_path / 'rgba.png')
    record = read_image(tmp_path / 'rgba.png')
    assert record.rgb.shape == (512, 512, 3)
    np.testing.assert_array_equal(record.rgb, astronaut / np.float32(255))
    np.testing.assert_array_equal(record.alpha, alpha / np.float32(255))


def test_read_gray_alpha(tmp_path, camera):
    alpha = np.full_like(camera, 128)
    Image.fromarray(np.dstack([camera, alpha]), 'LA').save(tmp_path / 'la.png')
    record = read_image(tmp_path / 'la.png')
    np.testing.assert_array_equal(record.rgb[..., 1], camera / np.float32(255))
    np.testing.assert_array_equal(record.alpha, alpha / np.float32(255))


@pytest.mark.parametrize('suffix', ['.png', '.tif'])
def test_read_16bit(tmp_path, astronaut, camera, suffix):
    rgb16 = astronaut.astype(np.uint16) * 257 + 3  # uses the low byte too
    gray16 = camera.astype(np.uint16) * 256
    cv2.imwrite(str(tmp_path / f'c{suffix}'), rgb16[..., ::-1])
    cv2.imwrite(str(tmp_path / f'g{suffix}'), gray16)
    color, gray = read_image(tmp_path / f'c{suffix}'), read_image(tmp_path / f'g{suffix}')
    assert color.bit_depth == 16 and gray.bit_depth == 16
    np.testing.assert_allclose(color.rgb, rgb16 / 65535.0, atol=1e-7)
    np.testing.assert_allclose(gray.rgb[..., 2], gray16 / 65535.0, atol=1e-7)


@pytest.mark.parametrize('transparent', [False, True])
def test_read_palette_png(tmp_path, astronaut, transparent):
    palette = Image.fromarray(astronaut).quantize(colors=64)
    kwargs = {'transparency': 0} if transparent else {}
    palette.save(tmp_path / 'p.png', **kwargs)
    record = read_image(tmp_path / 'p.png')
    expected = np.asarray(Image.open(tmp_path / 'p.png').convert('RGBA'))
    np.testing.assert_array_equal(record.rgb, expected[..., :3] / np.float32(255))
    if transparent:
        np.testing.assert_array_equal(record.alpha, expected[..., 3] / np.float32(255))
        assert record.alpha.min() == 0.0 and record.alpha.max() == 1.0
    else:
        assert record.alpha is None


def test_read_gif_through_pillow(tmp_path, astronaut):
    Image.fromarray(astronaut).save(tmp_path / 'a.gif')
    record = read_image(tmp_path / 'a.gif')
    expected = np.asarray(Image.open(tmp_path / 'a.gif').convert('RGB'))
    np.testing.assert_array_equal(record.rgb, expected / np.float32(255))


def test_pillow_fallback_keeps_16bit_and_alpha(monkeypatch, tmp_path, astronaut, camera):
    # Force the fallback decoder on formats both can read, to check it returns what OpenCV would.
    Image.fromarray(camera.astype(np.uint16) * 257).save(tmp_path / 'g16.png')
    Image.fromarray(np.dstack([astronaut, camera]), 'RGBA').save(tmp_path / 'rgba.png')
    expected = [read_image(tmp_path / 'g16.png'), read_image(tmp_path / 'rgba.png')]
    monkeypatch.setattr(image_io.cv2, 'imdecode', lambda *args: None)
    got = [read_image(tmp_path / 'g16.png'), read_image(tmp_path / 'rgba.png')]
    for e, g in zip(expected, got):
        assert e.bit_depth == g.bit_depth
        np.testing.assert_array_equal(e.rgb, g.rgb)
        assert (e.alpha is None) == (g.alpha is None)
    np.testing.assert_array_equal(expected[1].alpha, got[1].alpha)
    assert got[0].bit_depth == 16


@pytest.mark.parametrize('orientation', range(1, 9))
def test_read_jpeg_applies_exif_orientation(tmp_path, orientation):
    # Big flat blocks: JPEG keeps them nearly exact, and any wrong flip/rotation moves a whole block.
    blocks = np.zeros((96, 160, 3), np.uint8)
    blocks[:48, :80] = (255, 0, 0)
    blocks[:48, 80:] = (0, 255, 0)
    blocks[48:, :80] = (0, 0, 255)
    blocks[48:, 80:] = (255, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(blocks).save(tmp_path / 'o.jpg', quality=98, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / 'o.jpg'))) / np.float32(255)
    record = read_image(tmp_path / 'o.jpg')
    assert record.rgb.shape == expected.shape
    assert np.abs(record.rgb - expected).mean() < 2 / 255
    if orientation in (5, 6, 7, 8):
        assert record.rgb.shape[:2] == (160, 96)


def test_truncated_jpeg_raises(tmp_path, astronaut):
    jpeg = _jpeg_bytes(astronaut)
    (tmp_path / 'cut.jpg').write_bytes(jpeg[:len(jpeg) * 2 // 3])
    with pytest.raises(ImageReadError, match=r'cut\.jpg.*truncated'):
        read_image(tmp_path / 'cut.jpg')


@pytest.mark.parametrize('progressive', [False, True])
def test_jpeg_completeness_check(astronaut, progressive):
    jpeg = _jpeg_bytes(astronaut, progressive)
    assert image_io._jpeg_is_complete(jpeg)
    assert image_io._jpeg_is_complete(jpeg + b'appended trailer \xff\xda\x00')  # data after EOI is ignored
    for cut in (1, 2, 7, 100, len(jpeg) // 2, len(jpeg) - 200):
        assert not image_io._jpeg_is_complete(jpeg[:-cut]), cut


def test_empty_corrupt_and_missing_files(tmp_path, astronaut):
    (tmp_path / 'empty.png').write_bytes(b'')
    with pytest.raises(ImageReadError, match=r'empty\.png.*empty \(0 bytes\)'):
        read_image(tmp_path / 'empty.png')
    (tmp_path / 'junk.png').write_bytes(b'this is not an image at all')
    with pytest.raises(ImageReadError, match=r'junk\.png.*neither OpenCV nor Pillow'):
        read_image(tmp_path / 'junk.png')
    ok, png = cv2.imencode('.png', astronaut)
    (tmp_path / 'cut.png').write_bytes(png.tobytes()[:5000])
    with pytest.raises(ImageReadError, match=r'cut\.png'):
        read_image(tmp_path / 'cut.png')
    with pytest.raises(FileNotFoundError, match='nothing.png'):
        read_image(tmp_path / 'nothing.png')


# ------------------------------------------------------------------------------------------------ writing
def test_write_read_round_trip_8bit(tmp_path, astronaut):
    rgb = astronaut / np.float32(255)
    out = write_image(tmp_path / 'deep' / 'er' / 'a.png', rgb)
    assert out == tmp_path / 'deep' / 'er' / 'a.png'
    np.testing.assert_array_equal(read_image(out).rgb, rgb)
    # uint8 input is taken at its own range; out-of-range floats are clipped.
    write_image(tmp_path / 'u8.png', astronaut)
    np.testing.assert_array_equal(read_image(tmp_path / 'u8.png').rgb, rgb)
    write_image(tmp_path / 'clip.png', np.broadcast_to(np.array([1.7, -1.0, 0.5], np.float32), (4, 4, 3)))
    np.testing.assert_array_equal(read_image(tmp_path / 'clip.png').rgb[0, 0], np.float32([255, 0, 128]) / 255)


def test_write_keeps_alpha_and_16bit(tmp_path, astronaut, camera):
    rgb = astronaut / np.float32(255)
    alpha = camera / np.float32(255)
    write_image(tmp_path / 'rgba16.png', rgb, alpha=alpha, bit_depth=16)
    record = read_image(tmp_path / 'rgba16.png')
    assert record.bit_depth == 16
    np.testing.assert_allclose(record.rgb, rgb, atol=0.5 / 65535 + 1e-7)
    np.testing.assert_allclose(record.alpha, alpha, atol=0.5 / 65535 + 1e-7)
    # A smooth ramp survives at 16 bits with far finer steps than 8 bits allow.
    ramp = np.repeat(np.linspace(0, 1, 1000, dtype=np.float32)[None, :, None], 3, axis=2)
    write_image(tmp_path / 'ramp.tif', ramp, bit_depth=16)
    assert np.abs(read_image(tmp_path / 'ramp.tif').rgb - ramp).max() <= 0.5 / 65535 + 1e-7
    write_image(tmp_path / 'gray_alpha.png', camera / np.float32(255), alpha=alpha)
    gray = read_image(tmp_path / 'gray_alpha.png')
    np.testing.assert_array_equal(gray.rgb[..., 0], camera / np.float32(255))
    np.testing.assert_array_equal(gray.alpha, alpha)


def test_write_refuses_what_the_format_cannot_store(tmp_path, astronaut):
    rgb = astronaut / np.float32(255)
    with pytest.raises(ValueError, match='cannot store alpha'):
        write_image(tmp_path / 'a.jpg', rgb, alpha=np.ones((512, 512), np.float32))
    with pytest.raises(ValueError, match='16-bit'):
        write_image(tmp_path / 'a.jpg', rgb, bit_depth=16)
    with pytest.raises(ValueError, match='alpha must be'):
        write_image(tmp_path / 'a.png', rgb, alpha=np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match='H x W x 3'):
        write_image(tmp_path / 'a.png', np.zeros((4, 4, 2), np.float32))
    with pytest.raises(ValueError):
        write_image(tmp_path / 'a.unknownformat', rgb)
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_replace(tmp_path, astronaut, monkeypatch):
    target = tmp_path / 'out.png'
    write_image(target, astronaut)
    before = target.read_bytes()

    def failing_replace(src, dst):
        raise OSError('disk full')

    monkeypatch.setattr(image_io.os, 'replace', failing_replace)
    with pytest.raises(OSError, match='disk full'):
        write_image(target, 1 - astronaut / np.float32(255))
    assert target.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ['out.png']  # and no temporary file is left


def test_write_jpeg(tmp_path, astronaut):
    write_image(tmp_path / 'a.jpg', astronaut / np.float32(255))
    assert np.abs(read_image(tmp_path / 'a.jpg').rgb - astronaut / np.float32(255)).mean() < 0.02


# ------------------------------------------------------------------------------------------------ tensors
def test_tensor_round_trip(astronaut):
    rgb = astronaut / np.float32(255)
    tensor = image_to_tensor(rgb)
    assert tensor.shape == (1, 3, 512, 512) and tensor.dtype == torch.float32
    assert torch.equal(tensor[0, 0], torch.from_numpy(rgb[..., 0]))
    back = tensor_to_image(tensor)
    assert back.dtype == np.float32 and back.shape == (512, 512, 3)
    np.testing.assert_array_equal(back, rgb)
    np.testing.assert_array_equal(tensor_to_image(tensor[0]), rgb)


def test_tensor_to_image_clamps_and_handles_bf16():
    t = torch.tensor([-0.5, 0.25, 1.5]).view(1, 3, 1, 1).to(torch.bfloat16).requires_grad_()
    np.testing.assert_array_equal(tensor_to_image(t)[0, 0], [0.0, 0.25, 1.0])
    with pytest.raises(ValueError, match='batch of 2'):
        tensor_to_image(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match='H x W x 3'):
        image_to_tensor(np.zeros((4, 4, 4), np.float32))
    assert image_to_tensor(np.zeros((4, 5), np.float32)).shape == (1, 3, 4, 5)


# ------------------------------------------------------------------------------------------------ folders
def test_list_images(tmp_path, astronaut):
    for rel in ['b.png', 'a.JPG', 'c.webp', 'notes.txt', '.hidden.png', 'sub/d.tif', '.cache/e.png']:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b'x')
    (tmp_path / 'folder.png').mkdir()
    assert [p.name for p in list_images(tmp_path)] == ['a.JPG', 'b.png', 'c.webp']
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(str(tmp_path), recursive=True)] == [
        'a.JPG', 'b.png', 'c.webp', 'sub/d.tif']
    assert all(ext == ext.lower() and ext.startswith('.') for ext in IMAGE_EXTENSIONS)
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / 'missing')
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / 'b.png')


# ------------------------------------------------------------------------------------------------ real inputs
def test_read_every_low_quality_portrait():
    portraits_lq = require_test_data('portraits_lq')
    paths = list_images(portraits_lq, recursive=True)
    assert len(paths) == len(published_files('portraits_lq')), f'images missing in {portraits_lq}'
    with_alpha = 0
    for path in paths:
        record = read_image(path)
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            file_alpha = np.asarray(im.getchannel('A')) if mode in ('RGBA', 'LA') else None
        assert record.rgb.shape == (size[1], size[0], 3), path
        assert record.rgb.dtype == np.float32 and record.rgb.min() >= 0 and record.rgb.max() <= 1, path
        if mode in ('RGBA', 'LA'):
            with_alpha += 1
            assert record.alpha is not None and record.alpha.shape == (size[1], size[0]), path
            np.testing.assert_array_equal(record.alpha, file_alpha / np.float32(255))
        else:
            assert record.alpha is None, path
    assert with_alpha >= 1


@pytest.mark.parametrize('side', [16384, 30000, 60000])
def test_decompression_bombs_are_refused_from_the_header(tmp_path, side):
    from portraitisr.utils.image_io import ImageTooLargeError, read_image_size

    path = tmp_path / f'bomb{side}.png'
    path.write_bytes(png_claiming(side, side))
    assert path.stat().st_size < 200_000
    assert read_image_size(path) == (side, side)
    with pytest.raises(ImageTooLargeError, match=rf'bomb{side}\.png: {side}x{side} .* limit of 134\.2 MP'):
        read_image(path)


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    from portraitisr.utils.image_io import ImageTooLargeError

    path = tmp_path / 'small.png'
    write_image(path, np.zeros((40, 50, 3), np.float32))
    with pytest.raises(ImageTooLargeError, match='50x40 = 2000 pixels is more than the limit of 1999 pixels'):
        read_image(path, max_pixels=1999)
    assert read_image(path, max_pixels=2000).rgb.shape == (40, 50, 3)
    monkeypatch.setenv('PORTRAITISR_MAX_IMAGE_PIXELS', '100')
    with pytest.raises(ImageTooLargeError):
        read_image(path)
    monkeypatch.setenv('PORTRAITISR_MAX_IMAGE_PIXELS', '0')  # no limit
    assert read_image(path).rgb.shape == (40, 50, 3)


def test_integer_samples_are_written_as_they_are(tmp_path, astronaut):
    """uint8 / uint16 images of the file's depth skip the float round trip and give the same file."""
    rgb8 = astronaut[:32, :40]
    alpha8 = np.full(rgb8.shape[:2], 200, np.uint8)
    via_float = write_image(tmp_path / 'float.png', rgb8.astype(np.float32) / 255, alpha8.astype(np.float32) / 255)
    direct = write_image(tmp_path / 'direct.png', rgb8, alpha8)
    assert via_float.read_bytes() == direct.read_bytes()
    rgb16 = (rgb8.astype(np.uint16) * 257)
    write_image(tmp_path / 'sixteen.png', rgb16, bit_depth=16)
    assert np.array_equal(cv2.imread(str(tmp_path / 'sixteen.png'), cv2.IMREAD_UNCHANGED)[..., ::-1], rgb16)


def test_output_suffix_and_strict_unit_float():
    from portraitisr.utils.image_io import output_suffix, unit_float_image

    assert [output_suffix(n) for n in ('a.jpg', 'b.BMP', 'c.gif', 'd.png', 'e.PPM', 'f.tif')] == \
        ['.jpg', '.png', '.png', '.png', '.png', '.tif']
    assert unit_float_image(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    assert unit_float_image(np.array([[65535]], np.uint16)).tolist() == [[1.0]]
    assert unit_float_image(np.array([[0.5]], np.float64)).dtype == np.float32
    with pytest.raises(TypeError, match='int64'):
        unit_float_image(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match='0..255'):
        unit_float_image(np.full((2, 2), 255.0))
    with pytest.raises(ValueError, match='NaN'):
        unit_float_image(np.array([[np.nan]]))


def test_corrupt_file_error_is_the_only_output(tmp_path, capfd):
    """OpenCV's own log line (``[ERROR:0@..] global grfmt_png.cpp ... readHeader``) is not printed beside ours."""
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\nbroken')
    capfd.readouterr()
    with pytest.raises(ImageReadError, match='bad.png'):
        read_image(bad)
    captured = capfd.readouterr()
    assert captured.err == '' and captured.out == ''
