"""Train like tools/train.py, then dump this rank's trainable weights (distributed test)."""
import os
import sys

import torch
import torch.distributed as dist

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from mmengine.config import Config  # noqa: E402

from portraitisr.utils.runner_setup import build_runner, prepare_config  # noqa: E402


def main() -> None:
    config, work_dir, max_iters = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = prepare_config(Config.fromfile(config), config, work_dir=work_dir, launcher='pytorch',
                         cfg_options={'train_cfg.max_iters': max_iters,
                                      'train_cfg.val_interval': 1000,
                                      'default_hooks.checkpoint.interval': max_iters})
    runner = build_runner(cfg)
    initial = {n: p.detach().clone() for n, p in runner.model.named_parameters() if p.requires_grad}
    runner.train()
    final = {n: p.detach().clone() for n, p in runner.model.named_parameters() if p.requires_grad}
    torch.save(dict(initial=initial, final=final),
               os.path.join(work_dir, f'weights_rank{dist.get_rank()}.pt'))


if __name__ == '__main__':
    main()
