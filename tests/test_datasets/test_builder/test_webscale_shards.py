"""Web-scale builder input: img2dataset-layout shards (tools/make_webdataset_shards.py), streaming reads with the
metadata pre-filter, per-shard records resumed per shard; the builder package imports without the web-scale extra."""
import importlib.util
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from tests.helpers.data_files import REPO_ROOT

wds = pytest.importorskip('webdataset', reason='webdataset is missing: pip install -e ".[webscale]"')
pytest.importorskip('pyarrow', reason='pyarrow is missing: pip install -e ".[webscale]"')

from portraitisr.datasets.builder import BuilderWarning, ScanConfig, image_id_of, load_records  # noqa: E402
from portraitisr.datasets.builder.shards import (find_shards, meta_reject_reason, read_shard,  # noqa: E402
                                                 read_shard_stats, scan_shards, shard_records_path)
from portraitisr.utils.image_io import write_image  # noqa: E402

CONFIG = ScanConfig(min_long_side=800, min_short_side=700, min_eye_distance=30)


def _tool():
    spec = importlib.util.spec_from_file_location('make_webdataset_shards',
                                                  REPO_ROOT / 'tools' / 'make_webdataset_shards.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.fixture(scope='module')
def faceless(tmp_path_factory):
    """Photos without faces (fast to scan): two candidates, one too small, one too wide, one corrupt."""
    root = tmp_path_factory.mktemp('faceless') / 'photos'
    rng = np.random.default_rng(0)
    write_image(root / 'a.png', rng.random((800, 900, 3), dtype=np.float32))
    write_image(root / 'b.jpg', rng.random((900, 800, 3), dtype=np.float32))
    write_image(root / 'sub' / 'small.png', rng.random((300, 400, 3), dtype=np.float32))
    write_image(root / 'sub' / 'wide.png', rng.random((800, 2000, 3), dtype=np.float32))
    (root / 'sub' / 'zz_corrupt.jpg').write_bytes((root / 'b.jpg').read_bytes()[:500])
    return root


def test_the_tool_writes_img2dataset_shards(faceless, tmp_path):
    tool = _tool()
    assert tool.main([str(faceless), str(tmp_path / 'shards'), '--samples-per-shard', '2', '--url-prefix',
                      'https://example.org/']) == 0
    names = sorted(p.name for p in (tmp_path / 'shards').iterdir())
    assert names == [f'0000{n}{suffix}' for n in range(3) for suffix in ('.parquet', '.tar', '_stats.json')]
    members = _members(tmp_path / 'shards' / '00000.tar')
    # img2dataset's keys: 5-digit shard number, then ceil(log10(samples per shard)) = 1 digit of index
    assert sorted(members) == ['000000.json', '000000.png', '000001.jpg', '000001.json']
    assert members['000000.png'] == (faceless / 'a.png').read_bytes()  # the photo's bytes, as they are
    meta = json.loads(members['000000.json'])
    assert list(meta) == list(tool.META_KEYS)
    assert (meta['url'], meta['key'], meta['status'], meta['width'], meta['height']) == (
        'https://example.org/a.png', '000000', 'success', 900, 800)
    import hashlib

    assert meta['sha256'] == hashlib.sha256(members['000000.png']).hexdigest()
    stats = json.loads((tmp_path / 'shards' / '00002_stats.json').read_text())
    assert (stats['count'], stats['successes']) == (1, 1)
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / 'shards' / '00001.parquet').column('url').to_pylist() == [
        'https://example.org/sub/small.png', 'https://example.org/sub/wide.png']
    # the same photos give byte-identical shards
    tool.main([str(faceless), str(tmp_path / 'again'), '--samples-per-shard', '2', '--url-prefix',
               'https://example.org/'])
    for n in range(3):
        assert (tmp_path / 'again' / f'0000{n}.tar').read_bytes() == (tmp_path / 'shards' / f'0000{n}.tar').read_bytes()
    assert [s.name for s in find_shards(tmp_path / 'shards')] == ['00000', '00001', '00002']


def _shard(path, samples):
    """A shard of ``(key, {suffix: bytes})`` samples."""
    with wds.TarWriter(str(path)) as sink:
        for key, members in samples:
            sink.write({'__key__': key, **members})
    return path


def test_the_metadata_prefilter_rejects_before_decoding(tmp_path):
    garbage = b'not an image at all'
    meta = lambda w, h: json.dumps(dict(width=w, height=h)).encode()  # noqa: E731
    path = _shard(tmp_path / 'part.tar', [
        ('small', {'jpg': garbage, 'json': meta(640, 480)}),       # too small by its metadata: never decoded
        ('wide', {'jpg': garbage, 'json': meta(3000, 1000)}),      # aspect 3.0 either way
        ('tall', {'jpg': garbage, 'json': meta(900, 1400)}),       # 0.64 one way, 1.56 the other: decode it
        ('nometa', {'png': garbage}),                              # no metadata: decode it
        ('caption', {'txt': b'a sample without an image'})])
    shard = find_shards(path)[0]
    items = list(read_shard(shard, CONFIG))
    assert items[-1] == ('end', dict(samples=5, error=None))
    by_key = {(item.image if kind == 'sample' else item['image']): (kind, item) for kind, item in items[:-1]}
    kind, small = by_key['part/small.jpg']
    assert kind == 'record' and (small['status'], small['reason'], small['width'], small['height']) == (
        'rejected', 'too_small', 640, 480)
    assert (small['file_size'], small['file_mtime_ns']) == (len(garbage), shard.file_mtime_ns)
    assert small['image_id'] == image_id_of('part/small.jpg')
    assert by_key['part/wide.jpg'][1]['reason'] == 'aspect'
    assert by_key['part/tall.jpg'][0] == 'sample' and by_key['part/nometa.png'][0] == 'sample'
    assert by_key['part/caption'][1]['status'] == 'error'
    assert by_key['part/caption'][1]['reason'].startswith('unreadable: part/caption: the sample has no image member')
    assert meta_reject_reason(dict(width=4000, height=3000), ScanConfig()) is None
    assert meta_reject_reason(dict(width='?', height=3000), ScanConfig()) is None
    # scanned: the samples that reached the decoder are unreadable, with one line each
    out = tmp_path / 'out'
    records = {r['image']: r for r in load_records(scan_shards(path, out, CONFIG)[0])}
    assert records['part/tall.jpg']['reason'].startswith('unreadable: cannot read image file part/tall.jpg')
    assert records['part/small.jpg'] == small


def test_a_truncated_shard_keeps_what_was_read(faceless, tmp_path):
    tool = _tool()
    tool.main([str(faceless), str(tmp_path / 'shards'), '--samples-per-shard', '5'])
    data = (tmp_path / 'shards' / '00000.tar').read_bytes()
    (tmp_path / 'shards' / '00000.tar').write_bytes(data[:len(data) // 2])
    scan_shards(tmp_path / 'shards', tmp_path / 'out', CONFIG)
    stats = read_shard_stats(tmp_path / 'out')[0]
    assert stats['error'].startswith('unreadable: ') and 0 < stats['samples'] < 5
    assert len(load_records(shard_records_path(tmp_path / 'out', '00000'))) == stats['samples']


def test_shards_resume_per_shard_and_changed_shards_are_rescanned(faceless, tmp_path):
    _tool().main([str(faceless), str(tmp_path / 'shards'), '--samples-per-shard', '2'])
    full = tmp_path / 'full'
    paths = scan_shards(tmp_path / 'shards', full, CONFIG)
    reference = {p.name: p.read_bytes() for p in paths}
    records = {r['image']: r for p in paths for r in load_records(p)}
    assert [(records[k]['status'], records[k]['reason']) for k in sorted(records)] == [
        ('rejected', 'no_face'), ('rejected', 'no_face'), ('rejected', 'too_small'), ('rejected', 'aspect'),
        ('error', records['00002/000020.jpg']['reason'])]
    assert records['00002/000020.jpg']['reason'].startswith('unreadable: ')

    resumed = tmp_path / 'resumed'
    scan_shards(tmp_path / 'shards', resumed, CONFIG, limit=1)  # as a run killed after its first shard
    assert [s['shard'] for s in read_shard_stats(resumed)] == ['00000']
    first = (resumed / 'records' / '00000.done.json').read_bytes()
    paths = scan_shards(tmp_path / 'shards', resumed, CONFIG)
    assert {p.name: p.read_bytes() for p in paths} == reference
    assert (resumed / 'records' / '00000.done.json').read_bytes() == first  # not scanned again

    os.utime(tmp_path / 'shards' / '00001.tar', ns=(1, 1))  # a changed shard
    (tmp_path / 'shards' / '00002.tar').unlink()  # a deleted one
    with pytest.warns(BuilderWarning) as caught:
        paths = scan_shards(tmp_path / 'shards', resumed, CONFIG)
    assert sorted(str(w.message) for w in caught) == [
        '00001: the shard changed since it was recorded (size or modification time); scanned again',
        '00002: a shard recorded before but no longer in the input; its records are dropped']
    assert [p.name for p in paths] == ['00000.jsonl', '00001.jsonl']
    assert read_shard_stats(resumed)[1]['file_mtime_ns'] == 1
    assert [r['file_mtime_ns'] for r in load_records(paths[1])] == [1, 1]


def test_the_builder_imports_without_the_web_scale_packages():
    code = '''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ray', 'faiss', 'webdataset'):
            raise ImportError(f'{name} is blocked')
sys.meta_path.insert(0, Block())
import portraitisr.datasets.builder as builder
from portraitisr.datasets.builder import ScanConfig, build_manifests, scan_images, write_report
assert not {'ray', 'faiss', 'webdataset'} & set(sys.modules), sorted(sys.modules)
try:
    import portraitisr.datasets.builder.shards
except ImportError as error:
    print('shards:', error)
'''
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stderr
    assert 'shards: webdataset is blocked' in result.stdout


def test_decoding_bytes_equals_reading_the_file_and_integers_round_trip(tmp_path):
    from portraitisr.datasets.builder.stages import to_floats, to_integers
    from portraitisr.utils.image_io import decode_image, read_image

    rng = np.random.default_rng(1)
    for name, depth in (('x.png', 8), ('y.jpg', 8), ('z.png', 16)):
        write_image(tmp_path / name, rng.random((37, 53, 3), dtype=np.float32), bit_depth=depth)
        image = read_image(tmp_path / name)
        decoded = decode_image((tmp_path / name).read_bytes(), f'shard/{name}')
        assert decoded.bit_depth == depth and np.array_equal(decoded.rgb, image.rgb)
        pixels = to_integers(image.rgb, image.bit_depth)
        assert pixels.dtype == (np.uint8 if depth == 8 else np.uint16)
        assert np.array_equal(to_floats(pixels), image.rgb)  # exact: the float image travels as its integers
    with pytest.raises(ValueError, match='cannot read image file shard/bad.jpg'):
        decode_image(b'\xff\xd8\xff' + bytes(20), 'shard/bad.jpg')
