"""Image-folder datasets on real package photos."""
import json

import numpy as np
import pytest
import torch

from portraitisr.registry import DATASETS
from portraitisr.utils.image_io import write_image


def test_sample_photos_crop_flip_rotate_and_tags(tmp_path):
    tags_file = tmp_path / 'tags.json'
    tags_file.write_text(json.dumps({'astronaut': 'woman, space suit'}))
    dataset = DATASETS.build(dict(type='ImageFolderDataset', images=['sample://astronaut',
                                  'sample://camera'], crop_size=96, flip=True, rotate90=True,
                                  repeat=3, tags_file=str(tags_file)))
    assert len(dataset) == 6
    np.random.seed(0)
    item = dataset[0]
    assert item['gt'].shape == (3, 96, 96) and item['gt'].dtype == torch.float32
    assert 0 <= item['gt'].min() and item['gt'].max() <= 1
    assert item['metainfo']['tags'] == ['woman', 'space suit']
    gray = dataset[1]['gt']  # camera is grayscale: expanded to three equal channels
    assert torch.equal(gray[0], gray[1]) and 'tags' not in dataset[1]['metainfo']


def test_center_crop_is_deterministic_and_pads_small_images():
    dataset = DATASETS.build(dict(type='ImageFolderDataset', images=['sample://grace_hopper'],
                                  crop_size=1024, crop_mode='center'))
    first, second = dataset[0]['gt'], dataset[0]['gt']
    assert first.shape == (3, 1024, 1024) and torch.equal(first, second)


def test_resize_for_faces():
    dataset = DATASETS.build(dict(type='ImageFolderDataset', images=['sample://astronaut'],
                                  resize=128))
    assert dataset[0]['gt'].shape == (3, 128, 128)


def test_paired_folder_upscales_like_osediff(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    lq = rng.random((16, 20, 3)).astype(np.float32)
    write_image(tmp_path / 'lq' / 'a.png', lq)
    write_image(tmp_path / 'gt' / 'a.png', rng.random((64, 80, 3)).astype(np.float32))
    dataset = DATASETS.build(dict(type='PairedImageFolderDataset', lq_root=str(tmp_path / 'lq'),
                                  gt_root=str(tmp_path / 'gt'), upscale=4))
    item = dataset[0]
    assert item['lq'].shape == item['gt'].shape == (3, 64, 80)
    pil = Image.open(tmp_path / 'lq' / 'a.png').convert('RGB').resize((80, 64), Image.BICUBIC)
    expected = torch.from_numpy(np.asarray(pil).astype(np.float32) / 255).permute(2, 0, 1)
    assert torch.equal(item['lq'], expected)


def test_clear_errors_for_bad_folders(tmp_path):
    with pytest.raises(ValueError, match='empty'):
        DATASETS.build(dict(type='ImageFolderDataset'))
    with pytest.raises(FileNotFoundError, match='not a folder'):
        DATASETS.build(dict(type='ImageFolderDataset', data_root=str(tmp_path / 'nope')))
    write_image(tmp_path / 'lq' / 'b.png', np.zeros((8, 8, 3), np.float32))
    (tmp_path / 'gt').mkdir()
    with pytest.raises(FileNotFoundError, match='no GT'):
        DATASETS.build(dict(type='PairedImageFolderDataset', lq_root=str(tmp_path / 'lq'),
                            gt_root=str(tmp_path / 'gt')))
    with pytest.raises(KeyError, match='available'):
        DATASETS.build(dict(type='ImageFolderDataset', images=['sample://nope']))


def test_every_dataset_reader_keeps_the_pixel_limit(tmp_path, monkeypatch):
    """Image folders, paired folders, portrait manifests and aligned faces (with their parsing maps) read through
    the header check: a file over the limit is refused by name before it is decoded."""
    from PIL import Image

    from portraitisr.datasets.aligned_face_dataset import AlignedFaceDataset
    from portraitisr.datasets.portrait_triplet_dataset import PortraitDataError, manifest_line
    from portraitisr.utils.image_io import ImageTooLargeError

    monkeypatch.setenv('PORTRAITISR_MAX_IMAGE_PIXELS', '1000')  # 40 x 30 = 1200 pixels is over it
    big = write_image(tmp_path / 'photos' / 'big.png', np.zeros((30, 40, 3), np.float32))
    dataset = DATASETS.build(dict(type='ImageFolderDataset', data_root=str(tmp_path / 'photos')))
    with pytest.raises(ImageTooLargeError, match='big.png: 40x30 = 1200 pixels is more than the limit of 1000'):
        dataset[0]
    write_image(tmp_path / 'gt' / 'big.png', np.zeros((30, 40, 3), np.float32))
    paired = DATASETS.build(dict(type='PairedImageFolderDataset', lq_root=str(tmp_path / 'photos'),
                                 gt_root=str(tmp_path / 'gt')))
    with pytest.raises(ImageTooLargeError, match='big.png'):
        paired[0]
    manifest = tmp_path / 'manifest.jsonl'
    manifest.write_text(manifest_line(str(big), height=30, width=40) + '\n')
    triplets = DATASETS.build(dict(type='PortraitTripletDataset', manifest=str(manifest), crop_size=16,
                                   include_unpaired=True))
    with pytest.raises(PortraitDataError, match='ImageTooLargeError: .*big.png'):
        triplets[0]
    with pytest.raises(ImageTooLargeError, match='big.png'):
        AlignedFaceDataset(data_root=str(tmp_path / 'photos'), size=16, scale=4)[0]

    monkeypatch.setenv('PORTRAITISR_MAX_IMAGE_PIXELS', '300')  # the 16 x 16 faces pass, the 20 x 20 maps do not
    faces, parsing = tmp_path / 'faces', tmp_path / 'parsing'
    write_image(faces / 'a.png', np.zeros((16, 16, 3), np.float32))
    write_image(faces / 'b.png', np.zeros((16, 16, 3), np.float32))
    parsing.mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(parsing / 'a.png')
    np.save(parsing / 'b.npy', np.zeros((3, 20, 20), np.float32))
    dataset = AlignedFaceDataset(data_root=str(faces), size=16, scale=4, parsing_root=str(parsing),
                                 num_parsing_classes=3)
    for index, name in ((0, 'a.png'), (1, 'b.npy')):
        with pytest.raises(ImageTooLargeError, match=f'{name}: 20x20 = 400 pixels'):
            dataset[index]
