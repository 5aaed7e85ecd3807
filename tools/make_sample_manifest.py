"""Write ``portraitisr/datasets/manifests/sample_portraits.jsonl`` (``sample://portraits``), a debug manifest.

The faces of the package photos (``sample://astronaut``, ``sample://grace_hopper``, ``sample://camera``) are
found with dlib's HOG detector (one upsampling) and its 68-point model reduced to the 5 points. There is one
photo per person, so each face gets itself as reference (similarity 1.0): a debug set that exercises the
reference path, not a real identity pair. ``camera`` has no frontal face for dlib and stays a faceless image,
which exercises the no-reference path.

    python tools/make_sample_manifest.py [--out PATH]
"""
import argparse
import os.path as osp
import sys
from pathlib import Path

import numpy as np

# Run from a source checkout without installing: make the package next to tools/ importable.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from portraitisr.utils.import_guards import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # before mmengine and pyiqa: see import_guards

from portraitisr.datasets.portrait_triplet_dataset import SAMPLE_MANIFESTS, manifest_line  # noqa: E402
from portraitisr.datasets.sample_images import load_sample_image  # noqa: E402
from portraitisr.face.detection import DlibFaceDetector  # noqa: E402

PHOTOS = ('astronaut', 'grace_hopper', 'camera')


def _round(values: np.ndarray) -> list:
    """Two decimals: sub-pixel enough, and the file stays diff-friendly."""
    return np.round(np.asarray(values, dtype=np.float64), 2).tolist()


def sample_manifest_lines() -> list:
    detector = DlibFaceDetector(model='hog', upsample_times=1)
    lines = []
    for name in PHOTOS:
        path = f'sample://{name}'
        image = load_sample_image(path)
        detections = detector.detect(image)[0]
        faces = []
        for box, score, landmarks in zip(detections.boxes, detections.scores, detections.landmarks):
            points = _round(landmarks)
            faces.append(dict(box=_round(box), landmarks=points, score=round(float(score), 4),
                              references=[dict(image=path, landmarks=points, similarity=1.0)]))
        lines.append(manifest_line(path, faces, height=image.shape[0], width=image.shape[1]))
        print(f'{path}: {len(faces)} face(s)')
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=str(SAMPLE_MANIFESTS['portraits']), help='output JSONL file')
    args = parser.parse_args()
    lines = sample_manifest_lines()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
