"""The plot of ``portraitisr study results``: win rates with their 95% intervals; for A/B studies also each pair's
shares of first better / same / second better (AuthFace's Table 5 as bars)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from .analysis import StudyResults

__all__ = ['plot_results']

PathLike = Union[str, 'os.PathLike[str]']


def plot_results(results: 'StudyResults', path: PathLike) -> Path:
    """Save the plot of ``results`` as a PNG at ``path``; returns the path."""
    import matplotlib

    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    rows = results.win_rates
    panels = 2 if results.pairs else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.6), squeeze=False)
    ax = axes[0, 0]
    values = [0.0 if math.isnan(r.value) else r.value for r in rows]
    errors = [[0.0 if math.isnan(r.ci_low) else max(v - r.ci_low, 0.0) for r, v in zip(rows, values)],
              [0.0 if math.isnan(r.ci_high) else max(r.ci_high - v, 0.0) for r, v in zip(rows, values)]]
    ax.bar(range(len(rows)), values, yerr=errors, capsize=4, color='#4c78a8')
    ax.set_xticks(range(len(rows)), [r.method for r in rows], rotation=30, ha='right')
    ax.set_ylabel(f'{results.metric} (95% bootstrap interval)')
    counted = sum(s.included for s in results.participants)
    ax.set_title(f'{results.title}: {counted} participants', fontsize=10)
    ax.set_ylim(0, max([1.0 / max(len(rows), 1)] + [v + e for v, e in zip(values, errors[1])]) * 1.15)
    if results.pairs:
        ax = axes[0, 1]
        labels = [f'{p.first}\nvs {p.second}' for p in results.pairs]
        totals = [max(p.total, 1) for p in results.pairs]
        first = [p.first_better / n for p, n in zip(results.pairs, totals)]
        same = [p.same / n for p, n in zip(results.pairs, totals)]
        second = [p.second_better / n for p, n in zip(results.pairs, totals)]
        ax.barh(labels, first, color='#4c78a8', label='first better')
        ax.barh(labels, same, left=first, color='#bab0ac', label='same')
        ax.barh(labels, second, left=[a + b for a, b in zip(first, same)], color='#f58518', label='second better')
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.legend(fontsize=8, loc='lower right')
        ax.set_title('A/B answers per pair', fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
