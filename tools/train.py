"""Train a model from a config: ``python tools/train.py CONFIG [--work-dir DIR] [--resume [PATH|URL]]``.

CONFIG is a config file or the name of a packaged config (``osediff_tiny``, ``osediff/osediff_sd21.py``). The same
as ``portraitisr train`` (:func:`portraitisr.cli.run_train`, over :func:`portraitisr.apis.training.train`), kept for
the OpenMMLab habit and ``tools/dist_train.sh``. Checkpoints are loaded without running code from them: a path or an
https URL with ``#sha256=<64 hex>`` (or ``--trust-url``) for ``--resume`` and ``--cfg-options load_from=...``; see
docs/checkpoints_and_resume.md. A checkpoint that is missing, refused or fails to download ends the run with one
message and exit status 2.
"""
import argparse
import os.path as osp
import sys

# Run from a source checkout without installing: make the package next to tools/ importable.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from portraitisr.cli import add_train_arguments, run_train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(prog='train.py', description='Train a portraitisr model')
    add_train_arguments(parser)
    sys.exit(run_train(parser.parse_args(), prog='train.py'))


if __name__ == '__main__':
    main()
