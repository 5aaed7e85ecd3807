"""Face-detection time per detector on one 1024 x 1024 photo with 5 faces.

The photo is composed of real faces: skimage's astronaut and matplotlib's Grace Hopper, plus, when the published test
data ``portraits_lq`` is present (``$PORTRAITISR_TEST_DATA``; ``python tools/fetch_test_data.py portraits_lq``), three
CodeFormer test portraits (else flipped copies of the two).

RetinaFace runs with facexlib's weights when they resolve locally (never downloaded); otherwise with random weights
and a threshold no face can pass, which times the network, priors and decoding but not a real NMS load
(reported as ``random weights``).

    python tools/benchmarks/face_detection.py                     # CPU, all detectors
    python tools/benchmarks/face_detection.py --repeats 5 --device cuda --detectors retinaface_resnet50
"""
import argparse
import os
import statistics
import sys
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/: the test-data setting

from portraitisr.face.detection import DlibFaceDetector, RetinaFaceDetector  # noqa: E402
from portraitisr.weights import WeightsNotFoundError  # noqa: E402
from fetch_test_data import test_data_root  # noqa: E402

FIXTURES = test_data_root() / 'portraits_lq'


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``size``."""
    h, w = image.shape[:2]
    s = min(h, w)
    crop = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def compose_photo() -> tuple[np.ndarray, list[str]]:
    """1024 x 1024 RGB uint8 with 5 faces of different sizes: two 512 px photos on top, three smaller below."""
    import matplotlib.cbook as cbook
    from PIL import Image
    from skimage import data

    with Image.open(cbook.get_sample_data('grace_hopper.jpg')) as im:
        grace = np.asarray(im.convert('RGB'))
    photos = [('astronaut', data.astronaut()), ('grace_hopper', grace)]
    for name in ('gray/Einstein01.png', 'whole/03.jpg', 'gray/Hepburn01.png'):
        path = FIXTURES / name
        if path.is_file():
            from portraitisr.utils.image_io import read_image
            photos.append((name, (read_image(path).rgb * 255).round().astype(np.uint8)))
    while len(photos) < 5:
        name, img = photos[len(photos) - 2]
        photos.append((name + ' (flipped)', img[:, ::-1].copy()))
    canvas = np.full((1024, 1024, 3), 120, np.uint8)
    for (_, img), (y, x, size) in zip(photos, [(0, 0, 512), (0, 512, 512), (592, 0, 400), (592, 400, 320),
                                               (592, 752, 272)]):
        canvas[y:y + size, x:x + size] = _fit(img, size)
    return canvas, [name for name, _ in photos]


def build(name: str, device: str):
    if name.startswith('dlib'):
        _, model, up = name.split('_')
        return DlibFaceDetector(model, upsample_times=int(up[2:])), ''
    network = 'resnet50' if name.endswith('resnet50') else 'mobilenet0.25'
    try:
        return RetinaFaceDetector(network, allow_download=False).to(device), ''
    except WeightsNotFoundError:
        return RetinaFaceDetector(network, pretrained=False, conf_threshold=1.0).to(device), 'random weights'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--detectors', nargs='+', default=[
        'dlib_hog_up0', 'dlib_hog_up1', 'dlib_mmod_up0', 'dlib_mmod_up1', 'retinaface_resnet50',
        'retinaface_mobilenet0.25'])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()

    photo, sources = compose_photo()
    print(f'photo 1024x1024, faces from: {", ".join(sources)}; torch threads {torch.get_num_threads()}, '
          f'device {args.device}')
    print(f'{"detector":28s} {"median s":>9s} {"min s":>8s} {"faces":>6s}  note')
    for name in args.detectors:
        detector, note = build(name, args.device)
        detector.detect(photo)  # warm-up (allocations, priors)
        times, found = [], None
        for _ in range(args.repeats):
            if args.device.startswith('cuda'):
                torch.cuda.synchronize()
            start = time.perf_counter()
            found = detector.detect(photo)[0]
            if args.device.startswith('cuda'):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        print(f'{name:28s} {statistics.median(times):9.3f} {min(times):8.3f} {len(found):6d}  {note}')


if __name__ == '__main__':
    main()
