"""Faults for the web-scale builder's tests: a quality scorer that kills its worker or stalls, and a driver script.

:class:`FaultScorer` scores every photo 1.0 and, driven by environment variables (Ray workers inherit the driver's
environment):

* ``WEBSCALE_KILL_SIZE=WxH`` and ``WEBSCALE_KILL_MARKER=PATH``: on a photo of that size, if PATH does not exist yet,
  create it and SIGKILL its own process (as the kernel's OOM killer would): one worker dies once; without
  ``WEBSCALE_KILL_MARKER``, every process that scores that photo dies (a photo that always kills its worker);
* ``WEBSCALE_STALL_SIZE=WxH``: sleep ``WEBSCALE_STALL_SECONDS`` (default 600) on a photo of that size, so that a
  test can kill the driver while the scan is surely in the middle.

Run as a script, it is a scan driver: ``python tests/helpers/webscale_faults.py ENGINE SHARDS OUT [WORKERS]`` scans
the shards with :data:`CONFIG` (``ENGINE``: ``ray`` on a small local Ray, or ``local``).
"""
import os
import signal
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _size(name: str):
    value = os.environ.get(name)
    if not value:
        return None
    width, height = value.split('x')
    return int(height), int(width)


class FaultScorer:
    """Scores 1.0; kills or stalls its process on photos of the sizes the environment names (see the module doc)."""

    higher_is_better = True

    def score(self, image: np.ndarray) -> float:
        if image.shape[:2] == _size('WEBSCALE_KILL_SIZE'):
            marker = os.environ.get('WEBSCALE_KILL_MARKER')
            if marker is None:
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return 1.0
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
        if image.shape[:2] == _size('WEBSCALE_STALL_SIZE'):
            time.sleep(float(os.environ.get('WEBSCALE_STALL_SECONDS', '600')))
        return 1.0


def config():
    """The scan settings of the tests: thresholds scaled down for ~1000 px photos, the fault scorer."""
    from portraitisr.datasets.builder import ScanConfig

    return ScanConfig(min_long_side=800, min_short_side=700, min_eye_distance=30, scorer=dict(type=FaultScorer))


def main() -> None:
    # the scorer by its importable name (not __main__'s), as the tests' own runs record it in scan.json
    from tests.helpers.webscale_faults import config

    engine, shards, out = sys.argv[1:4]
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    if engine == 'ray':
        import ray

        from portraitisr.datasets.builder.ray_scan import RayScanOptions, StageResources, scan_shards_ray

        ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False,
                 runtime_env=dict(env_vars=dict(PYTHONPATH=ROOT)))
        try:
            # embed one photo at a time: Ray Data holds rows until a batch is full, and while the test stalls the
            # scan no batch of 16 would fill, so the first shard would never finish before the kill
            options = RayScanOptions(workers=workers, stages=dict(embed=StageResources(batch_size=1)))
            scan_shards_ray(shards, out, config(), options)
        finally:
            ray.shutdown()
    else:
        from portraitisr.datasets.builder.shards import scan_shards

        scan_shards(shards, out, config(), workers=workers)


if __name__ == '__main__':
    main()
