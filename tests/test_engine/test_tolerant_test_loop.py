"""TolerantTestLoop: a test image that cannot be read is one line and left out; the rest is scored."""
import numpy as np
import pytest
import torch
from mmengine.evaluator import BaseMetric, Evaluator
from torch.utils.data import DataLoader, Dataset

from portraitisr.engine.loops import NoTestDataError, TolerantTestLoop, file_error_line
from portraitisr.utils.image_io import ImageTooLargeError, read_image, write_image
from tests.helpers.images import png_bomb


class _Files(Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return {'mean': float(read_image(self.paths[index]).rgb.mean()), 'name': self.paths[index].name}


class _Names(BaseMetric):
    def process(self, data_batch, data_samples):
        self.results += [(name, mean) for name, mean in zip(data_batch['name'], data_batch['mean'].tolist())]

    def compute_metrics(self, results):
        return {'names': ','.join(name for name, _ in results), 'mean': float(np.mean([m for _, m in results]))}


class _Model(torch.nn.Module):
    def test_step(self, data_batch):
        return [None] * len(data_batch['name'])


class _Runner:
    """The parts of mmengine's Runner a test loop touches."""

    def __init__(self):
        self.model = _Model()
        self.hooks = []
        self.visualizer = type('V', (), {})()

    def call_hook(self, name, **kwargs):
        self.hooks.append(name)


def _folder(tmp_path):
    write_image(tmp_path / 'a.png', np.full((8, 8, 3), 0.25, np.float32))
    (tmp_path / 'b.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'broken')  # corrupt
    png_bomb(tmp_path / 'c.png')  # a tiny PNG whose header claims 60000 x 60000
    write_image(tmp_path / 'd.png', np.full((8, 8, 3), 0.75, np.float32))
    return [tmp_path / n for n in ('a.png', 'b.png', 'c.png', 'd.png')]


@pytest.mark.parametrize('workers', [0, 1])
def test_bad_files_are_left_out_and_named(tmp_path, workers):
    loader = DataLoader(_Files(_folder(tmp_path)), batch_size=1, num_workers=workers)
    runner = _Runner()
    loop = TolerantTestLoop(runner, loader, Evaluator(_Names()))
    metrics = loop.run()
    values = {k.split('/')[-1]: v for k, v in metrics.items()}
    assert values['names'] == 'a.png,d.png' and values['mean'] == pytest.approx(0.5, abs=1e-3)
    assert len(loop.failed) == 2
    assert 'b.png' in loop.failed[0] and '\n' not in loop.failed[0] and not loop.failed[0].startswith('Caught')
    assert 'c.png' in loop.failed[1] and '60000x60000' in loop.failed[1] and 'limit' in loop.failed[1]
    assert runner.hooks[-2:] == ['after_test_epoch', 'after_test']


def test_nothing_loadable_is_one_error(tmp_path):
    paths = _folder(tmp_path)
    loader = DataLoader(_Files([paths[1], paths[2]]), batch_size=1)
    with pytest.raises(NoTestDataError, match=r'no test batch could be loaded \(2 skipped; the first: .*b\.png'):
        TolerantTestLoop(_Runner(), loader, Evaluator(_Names())).run()


def test_worker_error_line_is_the_original_message():
    error = ImageTooLargeError('Caught ImageTooLargeError in DataLoader worker process 0.\nOriginal Traceback '
                               '(most recent call last):\n  File "x.py", line 1, in f\n'
                               'portraitisr.utils.image_io.ImageTooLargeError: big.png: 1x1 is more than the limit\n')
    assert file_error_line(error) == 'big.png: 1x1 is more than the limit'
    assert file_error_line(FileNotFoundError('image file x.png does not exist')) == 'image file x.png does not exist'
