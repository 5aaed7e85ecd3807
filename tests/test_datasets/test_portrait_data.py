"""HeadsUp portrait data: triplet manifests, mixed batches, and the staged mixture sampler."""
import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from portraitisr.datasets import (ImageFolderDataset, ManifestError, MixedDataset, MixtureSampler, PortraitDataError,
                                  PortraitTripletDataset, load_sample_image, portrait_collate)
from portraitisr.datasets.image_folder_dataset import read_rgb, resize_square
from portraitisr.face.alignment import FaceAligner, get_template
from portraitisr.registry import FUNCTIONS
from portraitisr.utils.image_io import write_image

# dlib's 5 points of the package photos (as in the packaged manifest)
ASTRONAUT = [[203.17, 101.5], [246.5, 104.17], [225.0, 127.0], [201.0, 139.0], [246.0, 141.0]]
GRACE = [[223.67, 192.33], [305.33, 189.17], [267.0, 238.0], [233.0, 281.0], [300.0, 277.0]]


def write_manifest(path, records) -> str:
    path.write_text('\n'.join(r if isinstance(r, str) else json.dumps(r) for r in records) + '\n')
    return str(path)


def align(image: torch.Tensor, landmarks, size: int = 128, mirror_exact: bool = False) -> torch.Tensor:
    """``3 x H x W`` image -> its ``3 x size x size`` FFHQ-aligned face.

    ``mirror_exact``: least squares to the FFHQ template made left-right symmetric in the crop, so that aligning
    a mirrored image with mirrored, reordered landmarks gives exactly the mirrored face (the real template is
    about a pixel off symmetric, and LMEDS may pick other points once mirrored).
    """
    if mirror_exact:
        points = get_template('ffhq512', size)[0]
        mirrored = np.stack([size - 1 - points[:, 0], points[:, 1]], 1)[[1, 0, 2, 4, 3]]
        aligner = FaceAligner((points + mirrored) / 2, output_size=size, template_size=size, estimator='lstsq')
    else:
        aligner = FaceAligner('ffhq512', output_size=size)
    return aligner.align(image[None].double(), torch.as_tensor(landmarks, dtype=torch.float64)[None])[0]


# ---------------------------------------------------------------------------------------------- manifest
@pytest.mark.parametrize('line, problem', [
    ('{"image": "a.png", "faces": [}', 'not valid JSON'),
    ('["a.png"]', 'expected a JSON object'),
    ('{"faces": []}', 'no "image"'),
    ('{"image": "a.png", "faces": [{"box": [0, 0, 4, 4]}]}', r'faces\[0\] has no "landmarks"'),
    ('{"image": "a.png", "faces": [{"landmarks": [[1, 2], [3, 4]]}]}', r'faces\[0\].landmarks must be 5'),
    ('{"image": "a.png", "faces": [{"landmarks": %s, "box": [5, 0, 1, 4]}]}' % json.dumps(ASTRONAUT),
     r'faces\[0\].box must have x2 > x1'),
    ('{"image": "a.png", "faces": [{"landmarks": %s, "references": [{"image": "b.png"}]}]}'
     % json.dumps(ASTRONAUT), r'references\[0\] has an "image" but no "landmarks"'),
    ('{"image": "a.png", "faces": [{"landmarks": %s, "references": [{"similarity": 0.7}]}]}'
     % json.dumps(ASTRONAUT), 'needs a "crop"'),
    ('{"image": "a.png", "height": -3}', 'height must be a positive integer'),
    ('{"image": "sample://nobody"}', 'unknown sample image'),
])
def test_malformed_manifest_lines_name_file_and_line(tmp_path, line, problem):
    good = json.dumps(dict(image='sample://camera', faces=[]))
    manifest = write_manifest(tmp_path / 'bad.jsonl', [good, '', line])
    with pytest.raises(ManifestError, match=rf'bad\.jsonl:3: .*{problem}'):
        PortraitTripletDataset(manifest, unit='face')


def test_unreadable_images_are_errors_not_skips(tmp_path):
    (tmp_path / 'corrupt.png').write_bytes(b'not a png at all')
    manifest = write_manifest(tmp_path / 'm.jsonl', [dict(image='sample://camera'), dict(image='missing.png'),
                                                      dict(image='corrupt.png'),
                                                      dict(image='sample://astronaut', height=500, width=512)])
    dataset = PortraitTripletDataset(manifest, unit='face')
    assert len(dataset) == 4 and dataset[0]['gt'].shape == (3, 512, 512)
    with pytest.raises(PortraitDataError, match=r'm\.jsonl:2: cannot read image .*missing\.png'):
        dataset[1]
    with pytest.raises(PortraitDataError, match=r'm\.jsonl:3: cannot read image .*corrupt\.png'):
        dataset[2]
    with pytest.raises(PortraitDataError, match=r'm\.jsonl:4: .* is 512 x 512, the manifest says 512 x 500'):
        dataset[3]


def test_packaged_sample_manifest():
    dataset = PortraitTripletDataset('sample://portraits', unit='face', crop_mode='center', ref_size=64)
    by_name = {dataset.sample_info(i)['image']: i for i in range(len(dataset))}
    assert sorted(by_name) == ['sample://astronaut', 'sample://camera', 'sample://grace_hopper']
    for name, points in [('sample://astronaut', ASTRONAUT), ('sample://grace_hopper', GRACE)]:
        item = dataset[by_name[name]]
        info = item['metainfo']
        assert info['has_ref'] and info['ref_similarity'] == 1.0 and item['ref'].shape == (3, 64, 64)
        # whole image (no crop): the landmarks are the manifest's
        np.testing.assert_allclose(info['face_landmarks'].numpy(), points, atol=1e-4)
        # a self-reference is the face aligned from the photo itself
        torch.testing.assert_close(item['ref'].double(), align(item['gt'], points, 64), atol=1e-4, rtol=0)
    camera = dataset[by_name['sample://camera']]
    assert camera['ref'] is None and camera['metainfo']['face_landmarks'] is None
    assert camera['metainfo']['face_box'] is None and not camera['metainfo']['has_ref']
    assert camera['metainfo']['dataset'] == 'sample_portraits'


# ---------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize('seed, flipped', [(0, False), (3, False), (2, True), (6, True)])
def test_landmarks_follow_crop_and_flip(seed, flipped):
    """The face aligned from the cropped (flipped) GT with the item's landmarks is the face aligned from the
    original photo (flipped)."""
    dataset = PortraitTripletDataset('sample://portraits', crop_size=384, flip=True, ref_size=64)
    grace = torch.from_numpy(load_sample_image('sample://grace_hopper').transpose(2, 0, 1).copy())
    original = align(grace, GRACE)
    np.random.seed(seed)
    item = dataset[1]
    info = item['metainfo']
    assert info['face_landmarks'].shape == (5, 2) and info['face_landmarks'].dtype == torch.float32
    assert info['scale'] == 1.0 and item['gt'].shape == (3, 384, 384) and info['flipped'] == flipped
    left, top = info['crop_offset']
    np.testing.assert_array_equal(item['gt'].numpy(), grace[:, top:top + 384, left:left + 384].flip(-1).numpy()
                                  if info['flipped'] else grace[:, top:top + 384, left:left + 384].numpy())
    aligned = align(item['gt'], info['face_landmarks'])
    if not info['flipped']:
        torch.testing.assert_close(aligned, original, atol=1e-4, rtol=0)
        assert torch.allclose(info['face_box'], torch.tensor([180.0 - left, 139 - top, 367 - left, 326 - top]))
    else:
        mirrored = align(grace, GRACE, mirror_exact=True).flip(-1)
        torch.testing.assert_close(align(item['gt'], info['face_landmarks'], mirror_exact=True), mirrored,
                                   atol=1e-4, rtol=0)
        # mirrored but not reordered landmarks give an upside-down alignment: the test can tell
        unswapped = info['face_landmarks'][[1, 0, 2, 4, 3]]
        assert (align(item['gt'], unswapped, mirror_exact=True) - mirrored).abs().mean() > 0.1
        assert torch.allclose(info['face_box'], torch.tensor([384 - (367.0 - left), 139 - top, 384 - (180 - left),
                                                              326 - top]))
    # the reference is flipped together with the GT
    reference = align(grace, GRACE, 64)
    expected_ref = reference.flip(-1) if info['flipped'] else reference
    torch.testing.assert_close(item['ref'].double(), expected_ref, atol=1e-4, rtol=0)


def test_large_faces_are_downscaled_into_the_crop():
    dataset = PortraitTripletDataset('sample://portraits', crop_size=256, crop_mode='center', ref_size=64)
    item = dataset[1]  # Grace Hopper's aligned-face region is about 330 px
    info = item['metainfo']
    assert 0.6 < info['scale'] < 1 and item['gt'].shape == (3, 256, 256)
    torch.testing.assert_close(dataset[1]['gt'], item['gt'])  # centre mode draws nothing
    aligner = FaceAligner('ffhq512', output_size=64)
    validity = aligner.validity_mask(item['gt'][None], info['face_landmarks'][None])
    assert validity.min() > 0.99  # the whole aligned face lies inside the crop
    grace = torch.from_numpy(load_sample_image('sample://grace_hopper').transpose(2, 0, 1).copy())
    assert (align(item['gt'], info['face_landmarks'], 64) - align(grace, GRACE, 64)).abs().mean() < 0.02
    # without max_face_fraction headroom the face would be cut: 0.5 keeps it within half the crop
    half = PortraitTripletDataset('sample://portraits', crop_size=256, crop_mode='center', max_face_fraction=0.5)
    assert half[1]['metainfo']['scale'] == pytest.approx(info['scale'] / 2, rel=0.02)


@pytest.mark.parametrize('seed', [0, 2, 4, 6])  # 0: kept, 2, 4, 6: flipped
def test_image_folder_aligned_template_landmarks(tmp_path, seed):
    # an FFHQ-style image: the astronaut aligned to the FFHQ template at 256 px
    astronaut = torch.from_numpy(load_sample_image('sample://astronaut').transpose(2, 0, 1).copy())
    face = align(astronaut, ASTRONAUT, 256).float().clamp(0, 1)
    write_image(tmp_path / 'face.png', face.permute(1, 2, 0).numpy())
    dataset = ImageFolderDataset(images=[str(tmp_path / 'face.png')], crop_size=200, flip=True,
                                 aligned_face_template='ffhq512')
    np.random.seed(seed)
    item = dataset[0]
    image = item['gt'][None]
    full = torch.from_numpy(read_rgb(str(tmp_path / 'face.png')).transpose(2, 0, 1).copy())
    reference = align(full, get_template('ffhq512', 256)[0], 96, mirror_exact=True)
    aligned = align(image[0], item['metainfo']['face_landmarks'], 96, mirror_exact=True)
    # the crop cuts the face's border: compare the inside
    inner = (slice(None), slice(30, 70), slice(30, 70))
    np.random.seed(seed)  # replay the dataset's draws: top, left, flip
    np.random.randint(57), np.random.randint(57)
    flipped = np.random.rand() < 0.5
    expected = reference.flip(-1) if flipped else reference
    torch.testing.assert_close(aligned[inner], expected[inner], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match='rotate90'):
        ImageFolderDataset(images=['sample://camera'], rotate90=True, aligned_face_template='ffhq512')


# ---------------------------------------------------------------------------------------------- units
@pytest.fixture()
def pair_manifest(tmp_path):
    """astronaut: face 0 with two references (a crop file, an image + landmarks), face 1 without; camera:
    no face."""
    crop = load_sample_image('sample://grace_hopper')[100:300, 150:350]
    write_image(tmp_path / 'faces' / 'grace.png', crop)
    shifted = (np.array(ASTRONAUT) + [30, 300]).tolist()  # a second (made-up) face lower in the photo
    records = [
        dict(image='sample://astronaut', height=512, width=512, faces=[
            dict(box=[175, 76, 266, 167], landmarks=ASTRONAUT, score=0.9, references=[
                dict(crop='faces/grace.png', similarity=0.71),
                dict(image='sample://grace_hopper', landmarks=GRACE, similarity=0.8)]),
            dict(landmarks=shifted)]),
        dict(image='sample://camera', faces=[]),
    ]
    return write_manifest(tmp_path / 'pairs.jsonl', records), crop


def test_pair_and_face_units(pair_manifest):
    manifest, _ = pair_manifest
    assert len(PortraitTripletDataset(manifest)) == 2
    assert len(PortraitTripletDataset(manifest, repeat=3)) == 6
    unpaired = PortraitTripletDataset(manifest, include_unpaired=True)
    assert len(unpaired) == 4
    assert [unpaired.sample_info(i)['face_index'] for i in range(4)] == [0, 0, 1, None]
    faces = PortraitTripletDataset(manifest, unit='face', ref_size=32)
    assert len(faces) == 3 and faces.metainfo['num_pairs'] == 2 and faces.metainfo['num_faces'] == 2
    np.random.seed(0)
    similarities = {faces[0]['metainfo']['ref_similarity'] for _ in range(20)}
    assert similarities == {0.71, 0.8}  # drawn among the face's references
    best = PortraitTripletDataset(manifest, unit='face', crop_mode='center', ref_size=32)
    assert {best[0]['metainfo']['ref_similarity'] for _ in range(5)} == {0.8}
    assert faces[1]['ref'] is None and faces[1]['metainfo']['face_landmarks'] is not None
    assert faces[2]['metainfo']['face_index'] is None and faces[2]['ref'] is None


def test_references_from_crop_file_and_from_image(pair_manifest):
    manifest, crop = pair_manifest
    dataset = PortraitTripletDataset(manifest, ref_size=96)
    from_crop, from_image = dataset[0], dataset[1]
    assert from_crop['metainfo']['ref_path'].endswith('faces/grace.png')
    np.testing.assert_allclose(from_crop['ref'].numpy(), resize_square(crop, 96).transpose(2, 0, 1), atol=1e-6)
    grace = torch.from_numpy(load_sample_image('sample://grace_hopper').transpose(2, 0, 1).copy())
    torch.testing.assert_close(from_image['ref'].double(), align(grace, GRACE, 96), atol=1e-4, rtol=0)
    assert from_image['ref'].dtype == torch.float32 and from_image['metainfo']['ref_similarity'] == 0.8
    assert 0 <= from_image['ref'].min() and from_image['ref'].max() <= 1


# ---------------------------------------------------------------------------------------------- mixing
class Numbers(Dataset):
    def __init__(self, size: int, name: str = None):
        self.size = size
        if name:
            self.name = name

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return dict(gt=torch.full((1, ), float(index)), metainfo=dict(index=index))


def test_mixed_dataset_and_collate(pair_manifest):
    manifest, _ = pair_manifest
    mixed = MixedDataset([dict(type='PortraitTripletDataset', manifest=manifest, crop_size=128, ref_size=32,
                               name='portraits'),
                          dict(type='ImageFolderDataset', images=['sample://camera'], crop_size=128)])
    assert mixed.names == ['portraits', 'ImageFolderDataset1'] and mixed.cumulative_sizes == [2, 3]
    assert mixed.locate(2) == (1, 0) and mixed.locate(-1) == (1, 0)
    items = [mixed[2], mixed[0], mixed[1]]
    batch = portrait_collate(items)
    assert list(batch) == ['gt', 'ref', 'metainfo']
    assert [m['dataset'] for m in batch['metainfo']] == ['ImageFolderDataset1', 'portraits', 'portraits']
    assert batch['ref'][0] is None and batch['ref'][1].shape == (3, 32, 32)
    assert all(g.shape == (3, 128, 128) for g in batch['gt'])
    assert batch['metainfo'][1]['face_landmarks'].shape == (5, 2) and 'face_landmarks' not in batch['metainfo'][0]
    with_lq = portrait_collate([dict(lq=torch.zeros(3, 4, 4), metainfo={}), dict(gt=torch.ones(3, 8, 8))])
    assert with_lq['lq'][1] is None and with_lq['gt'][0] is None and with_lq['metainfo'] == [{}, {}]
    with pytest.raises(ValueError, match='unique'):
        MixedDataset([Numbers(2, 'a'), Numbers(3, 'a')])
    # explicit names replace the sub-dataset's own (here the manifest stem 'pairs')
    named = MixedDataset([dict(type='PortraitTripletDataset', manifest=manifest, ref_size=32), Numbers(2)],
                         names=['portraitsr4k', 'numbers'])
    assert named[0]['metainfo']['dataset'] == 'portraitsr4k' and named[2]['metainfo']['dataset'] == 'numbers'
    assert MixedDataset([named.datasets[0]])[0]['metainfo']['dataset'] == 'pairs'


def test_dataloader_from_config(pair_manifest):
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    manifest, _ = pair_manifest
    cfg = dict(batch_size=3, num_workers=0, collate_fn=dict(type='portrait_collate'),
               sampler=dict(type='MixtureSampler', batch_size=3, stages=[dict(iters=1, ratios=[1, 0]),
                                                                         dict(ratios=[0, 1])]),
               dataset=dict(type='MixedDataset', names=['portraitsr4k', 'ffhq'], datasets=[
                   dict(type='PortraitTripletDataset', manifest=manifest, crop_size=64, ref_size=32,
                        name='portraitsr4k'),
                   dict(type='ImageFolderDataset', images=['sample://camera'], crop_size=64,
                        aligned_face_template='ffhq512')]))
    with DefaultScope.overwrite_default_scope('portraitisr'):
        loader = Runner.build_dataloader(cfg, seed=0)
    assert FUNCTIONS.get('portrait_collate') is portrait_collate  # our registry, with mmengine's as parents
    assert FUNCTIONS.get('pseudo_collate') is not None
    assert isinstance(loader.sampler, MixtureSampler) and loader.sampler.seed == 0
    batches = iter(loader)
    first, second = next(batches), next(batches)
    assert {m['dataset'] for m in first['metainfo']} == {'portraitsr4k'} and all(r is not None for r in first['ref'])
    assert {m['dataset'] for m in second['metainfo']} == {'ffhq'} and 'ref' not in second
    assert second['metainfo'][0]['face_landmarks'].shape == (5, 2)


# ---------------------------------------------------------------------------------------------- sampler
PAPER_STAGES = [dict(iters=5000, ratios=[0.15, 0.05, 1.7, 0.3]), dict(ratios=[1.5, 0.5, 1.7, 0.3])]


def draw(sampler, count: int) -> np.ndarray:
    stream = iter(sampler)
    return np.array([next(stream) for _ in range(count)])


def dataset_of(mixed: MixedDataset, indices: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.array(mixed.cumulative_sizes), indices, side='right')


@pytest.fixture()
def mixture():
    return MixedDataset([Numbers(10), Numbers(5), Numbers(40), Numbers(7)], names=['p4k', 'ffhq', 'lsdir', 'div2k'])


def test_sampler_stage_ratios(mixture):
    sampler = MixtureSampler(mixture, stages=PAPER_STAGES, batch_size=4, seed=3)
    drawn = dataset_of(mixture, draw(sampler, 40000))
    for stage, part in enumerate([drawn[:20000], drawn[20000:]]):
        ratios = np.array(PAPER_STAGES[stage]['ratios'])
        empirical = np.bincount(part, minlength=4) / len(part)
        np.testing.assert_allclose(empirical, ratios / ratios.sum(), atol=0.01)
    assert sampler.stage_at(4999) == 0 and sampler.stage_at(5000) == 1 and sampler.current_stage == 1
    assert len(sampler) == 62


def test_sampler_switches_stage_at_iters_times_batch_size(mixture):
    sampler = MixtureSampler(mixture, stages=[dict(iters=3, ratios=[1, 0, 0, 0]), dict(ratios=[0, 0, 0, 1])],
                             batch_size=4, seed=0)
    stream = iter(sampler)
    drawn = []
    for _ in range(12):
        drawn.append(next(stream))
    assert sampler.current_stage == 0 and sampler.iteration == 2
    drawn += [next(stream) for _ in range(12)]
    assert sampler.current_stage == 1
    assert dataset_of(mixture, np.array(drawn)).tolist() == [0] * 12 + [3] * 12
    # shuffled epochs: the first 10 draws of a 10-sample dataset are each of its samples once
    assert sorted(drawn[:10]) == list(range(10))


def test_sampler_is_deterministic_and_differs_per_rank(mixture, monkeypatch):
    import portraitisr.datasets.samplers.mixture_sampler as module

    first = draw(MixtureSampler(mixture, stages=PAPER_STAGES, batch_size=4, seed=7), 500)
    sampler = MixtureSampler(mixture, stages=PAPER_STAGES, batch_size=4, seed=7)
    np.testing.assert_array_equal(first, draw(sampler, 500))
    np.testing.assert_array_equal(first, draw(sampler, 500))  # a new iterator replays (resume)
    assert not np.array_equal(first, draw(MixtureSampler(mixture, ratios=[0.15, 0.05, 1.7, 0.3], seed=8), 500))
    monkeypatch.setattr(module, 'get_dist_info', lambda: (1, 2))
    rank1 = MixtureSampler(mixture, stages=PAPER_STAGES, batch_size=4, seed=7)
    assert rank1.rank == 1 and not np.array_equal(first, draw(rank1, 500))


def test_sampler_sample_ratio_mode_and_errors(mixture):
    sampler = MixtureSampler(mixture, ratios=[1, 1, 1, 0], ratio_mode='sample', seed=0)
    np.testing.assert_allclose(sampler.probabilities[0], [10 / 55, 5 / 55, 40 / 55, 0])
    empirical = np.bincount(dataset_of(mixture, draw(sampler, 20000)), minlength=4) / 20000
    np.testing.assert_allclose(empirical, [10 / 55, 5 / 55, 40 / 55, 0], atol=0.01)
    with pytest.raises(ValueError, match='3 ratios for 4 datasets'):
        MixtureSampler(mixture, ratios=[1, 1, 1], seed=0)
    with pytest.raises(ValueError, match='batch_size'):
        MixtureSampler(mixture, stages=PAPER_STAGES, seed=0)
    with pytest.raises(ValueError, match='positive `iters`'):
        MixtureSampler(mixture, stages=[dict(ratios=[1, 1, 1, 1]), dict(ratios=[1, 1, 1, 1])], batch_size=2, seed=0)
    with pytest.raises(TypeError, match='MixedDataset'):
        MixtureSampler(Numbers(3), ratios=[1], seed=0)
