"""Make webdataset tar shards in img2dataset's layout from a folder of photos (input for the web-scale builder).

    python tools/make_webdataset_shards.py PHOTOS SHARDS [--samples-per-shard 10000]
    python tools/make_webdataset_shards.py SHARDS --sample-photos --generate 40 --samples-per-shard 8

img2dataset (``--output_format webdataset``) writes, per shard, ``NNNNN.tar`` with one sample per downloaded image:
``<key>.jpg`` (the image) and ``<key>.json`` (``url``, ``key``, ``status``, ``error_message``, ``width``,
``height``, ``original_width``, ``original_height``, ``exif``, ``sha256``), plus ``NNNNN.parquet`` (the same
metadata as a table) and ``NNNNN_stats.json`` (the shard's counts). Keys are the shard number (5 digits) followed by
the sample's index in the shard (``ceil(log10(samples per shard))`` digits), as img2dataset numbers them. This tool
writes that layout from photos that are already on disk: each photo's bytes as they are (no re-encoding; the member
is named by the photo's own format: ``jpg``, ``png``, ``webp``, ...), its relative path as the ``url`` (after
``--url-prefix``), its stored size (before any EXIF rotation, as img2dataset's decoder sees it) as ``width`` and
``height``. Photos are taken in sorted order, so the same folder always gives the same shards.

``--sample-photos`` adds the photos that ship with scikit-image and matplotlib (astronaut, camera, Grace Hopper),
``--generate N`` adds N generated 3840 x 2880 portraits of tools/benchmarks/portrait_builder.py (one or two real
faces pasted on a smooth background), so shards can be made with no photo folder at all.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, 'benchmarks'))

from portraitisr.utils.import_guards import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # before mmengine and pyiqa: see import_guards

import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402

from portraitisr.datasets.builder.photos import find_photos  # noqa: E402

#: img2dataset's metadata keys of a sample, in its order
META_KEYS = ('url', 'key', 'status', 'error_message', 'width', 'height', 'original_width', 'original_height', 'exif',
             'sha256')
#: the tar members' modification time (fixed: the same photos give byte-identical shards)
MEMBER_MTIME = 0.0


def member_name(path: str) -> str:
    """The tar member suffix of a photo: its own format's extension, lower case (``jpeg`` -> ``jpg``)."""
    ext = Path(path).suffix.lower().lstrip('.')
    return {'jpeg': 'jpg', 'tiff': 'tif'}.get(ext, ext)


def stored_size(data: bytes) -> Tuple[Optional[int], Optional[int]]:
    """``(width, height)`` of the stored pixels (EXIF orientation not applied, as img2dataset reports them);
    ``(None, None)`` when the header is unreadable (the photo is still written: the builder reports it)."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.size[0]), int(image.size[1])
    except Exception:  # noqa: BLE001 - Pillow raises many types for bad headers
        return None, None


def write_shards(photos: Sequence[Tuple[str, str]], out_dir: os.PathLike, samples_per_shard: int = 10000,
                 url_prefix: str = '') -> List[Path]:
    """Write ``photos`` (``(path, relative path)`` pairs) as img2dataset shards in ``out_dir``; the shard paths.

    Raises:
        ValueError: ``samples_per_shard`` below 1.
    """
    if samples_per_shard < 1:
        raise ValueError(f'samples_per_shard must be >= 1, got {samples_per_shard}')
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digits = max(1, math.ceil(math.log10(samples_per_shard))) if samples_per_shard > 1 else 1
    shards = []
    for shard_id, first in enumerate(range(0, len(photos), samples_per_shard)):
        start = time.time()
        name = f'{shard_id:05d}'
        rows = []
        path = out_dir / f'{name}.tar'
        tmp = out_dir / f'.{name}.tar.tmp'
        with wds.TarWriter(str(tmp), mtime=MEMBER_MTIME) as sink:
            for index, (photo, relative) in enumerate(photos[first:first + samples_per_shard]):
                data = Path(photo).read_bytes()
                key = f'{name}{index:0{digits}d}'
                width, height = stored_size(data)
                meta = dict(url=url_prefix + relative, key=key, status='success', error_message=None, width=width,
                            height=height, original_width=width, original_height=height, exif=None,
                            sha256=hashlib.sha256(data).hexdigest())
                sink.write({'__key__': key, member_name(photo): data, 'json': json.dumps(meta).encode('utf-8')})
                rows.append(meta)
        os.replace(tmp, path)
        table = pa.table({key: [row[key] for row in rows] for key in META_KEYS})
        pq.write_table(table, out_dir / f'{name}.parquet')
        stats = dict(count=len(rows), successes=len(rows), failed_to_download=0, failed_to_resize=0,
                     duration=time.time() - start, start_time=start, end_time=time.time(),
                     status_dict=dict(success=len(rows)))
        (out_dir / f'{name}_stats.json').write_text(json.dumps(stats, indent=4) + '\n', encoding='utf-8')
        shards.append(path)
    return shards


def sample_photos(folder: Path) -> List[Tuple[str, str]]:
    """The package photos (astronaut, camera, Grace Hopper) written as PNG into ``folder``."""
    from portraitisr.datasets.sample_images import SAMPLE_IMAGES, load_sample_image
    from portraitisr.utils.image_io import write_image

    written = []
    for name in sorted(SAMPLE_IMAGES):
        path = folder / 'samples' / f'{name}.png'
        write_image(path, load_sample_image(f'sample://{name}'))
        written.append((str(path), f'samples/{name}.png'))
    return written


def generated_photos(folder: Path, count: int, seed: int = 0) -> List[Tuple[str, str]]:
    """``count`` generated 3840 x 2880 portraits (tools/benchmarks/portrait_builder.py) in ``folder``."""
    from portrait_builder import generate

    generate(folder / 'generated', count, seed=seed)
    return [(str(p), f'generated/{p.name}') for p in sorted((folder / 'generated').glob('*.jpg'))]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('paths', nargs='+', metavar='[PHOTOS] SHARDS',
                        help='the photo folder (searched recursively; optional with --sample-photos / --generate) '
                             'and the output folder of the shards')
    parser.add_argument('--samples-per-shard', type=int, default=10000, help="img2dataset's default: 10000")
    parser.add_argument('--url-prefix', default='', help='written before each relative path in the "url" field')
    parser.add_argument('--sample-photos', action='store_true', help='add astronaut, camera and Grace Hopper')
    parser.add_argument('--generate', type=int, default=0, metavar='N', help='add N generated 4K portraits')
    parser.add_argument('--seed', type=int, default=0, help='seed of the generated portraits')
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error('give at most a photo folder and an output folder')
    if len(args.paths) == 1 and not (args.sample_photos or args.generate):
        parser.error('give a photo folder, or --sample-photos / --generate N')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.paths[-1])
    photos: List[Tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix='shards_') as scratch:
        if len(args.paths) == 2:
            try:
                photos += find_photos(args.paths[0], exclude=out_dir)
            except OSError as error:
                print(f'error: {error}', file=sys.stderr)
                return 2
        if args.sample_photos:
            photos += sample_photos(Path(scratch))
        if args.generate:
            photos += generated_photos(Path(scratch), args.generate, args.seed)
        photos.sort(key=lambda item: item[1])
        try:
            shards = write_shards(photos, out_dir, args.samples_per_shard, args.url_prefix)
        except ValueError as error:
            print(f'error: {error}', file=sys.stderr)
            return 2
    print(f'{len(photos)} photos in {len(shards)} shard(s) in {out_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
