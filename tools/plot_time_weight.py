"""Plot AuthFace's time weight (arXiv 2410.09864, Eq. 3) over the DDPM timesteps:
``docs/images/authface_time_weight.png``.

    python tools/plot_time_weight.py [--out docs/images/authface_time_weight.png] [--pairs 0,1 0.5,1 0,0.6]

Draws the logit-normal weight of :class:`~portraitisr.models.losses.TimeAwareFacialLoss` for the (m, s) pairs
given (default: SD3's m = 0, s = 1, which the configs use, and two others), the constant weight of Table 2 (c),
and marks the one-step restorers' fixed timestep 999 (where the weight is ~2e-10). Timestep k of T = 1000 is
t = (k + 0.5) / T, as the loss computes it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from portraitisr.utils.import_guards import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # before mmengine and pyiqa: see import_guards

import torch  # noqa: E402

from portraitisr.models.losses.time_aware_facial_loss import logit_normal_weight, normalized_time  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Plot AuthFace's logit-normal time weight (Eq. 3)")
    parser.add_argument('--out', default='docs/images/authface_time_weight.png')
    parser.add_argument('--pairs', nargs='+', default=['0,1', '0.5,1', '0,0.6'],
                        help='m,s pairs of Eq. 3 (the first is drawn as the default)')
    parser.add_argument('--timesteps', type=int, default=1000)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    steps = torch.arange(args.timesteps)
    t = normalized_time(steps, args.timesteps)
    figure, axis = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    for i, pair in enumerate(args.pairs):
        m, s = (float(v) for v in pair.split(','))
        weight = logit_normal_weight(t, m, s)
        label = f'time-aware, m={m:g}, s={s:g}' + (' (configs)' if i == 0 else '')
        axis.plot(steps.numpy(), weight.numpy(), lw=2.2 if i == 0 else 1.2, label=label)
    axis.axhline(1.0, color='grey', ls='--', lw=1.2, label='constant (Table 2 (c))')
    axis.axvline(args.timesteps - 1, color='black', ls=':', lw=1, label='one-step restorers (t = 999)')
    axis.set_xlabel('DDPM timestep t (noisier to the right)')
    axis.set_ylabel('Weight_P (Eq. 3)')
    axis.set_title('AuthFace time-aware facial loss weight')
    axis.set_xlim(0, args.timesteps - 1)
    axis.set_ylim(bottom=0)
    axis.legend(fontsize=7, loc='upper right')
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    figure.savefig(args.out)
    print(f'written: {args.out}')


if __name__ == '__main__':
    main()
