"""``win_rates.csv``: the win rates ``portraitisr study results`` writes and ``tools/test.py`` merges into Table 2.

HeadsUp (arXiv 2510.09924, section 4.2 and appendix "User Study Details") reports two win rates next to the metrics of
Table 2: WR_id (participants see the ground-truth face and pick the most similar of the methods' faces) and WR_N
(they pick the most natural face). "The win rate of one method is the frequency it is selected as the best image,
out of all the selections." A study measures one of them; its ``win_rates.csv`` has one row per method:

``study, metric, method, value, ci_low, ci_high, selections, answers, participants``

``metric`` is ``WR_id`` or ``WR_N`` for the two Table 2 studies and ``AB_win`` for a pairwise A/B study (AuthFace, arXiv
2410.09864, appendix C), which has no Table 2 column and is not merged (see :mod:`.table2`). Standard library only: the
web app and the analysis write this file without importing the evaluation package (which imports torch).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Union

__all__ = ['WIN_RATE_FIELDS', 'TABLE2_METRICS', 'WinRateRow', 'format_win_rates', 'read_win_rates',
           'write_win_rates']

#: The header of ``win_rates.csv``, in order.
WIN_RATE_FIELDS = ('study', 'metric', 'method', 'value', 'ci_low', 'ci_high', 'selections', 'answers',
                   'participants')
#: The metrics with a Table 2 column (``TABLE_LAYOUTS['portrait']``).
TABLE2_METRICS = ('WR_id', 'WR_N')

PathLike = Union[str, 'os.PathLike[str]']


@dataclass(frozen=True)
class WinRateRow:
    """One method's win rate in one study.

    Attributes:
        study: the study's title (for the reader; not used to merge).
        metric: ``WR_id``, ``WR_N`` or ``AB_win``.
        method: the method's name in the study (its folder's name unless given with ``--method NAME=DIR``).
        value: the win rate in [0, 1].
        ci_low, ci_high: the bootstrap 95% interval (NaN when it cannot be estimated, e.g. one participant).
        selections: how often the method was picked (A/B: won).
        answers: the answers it counts over (A/B: the comparisons it was in).
        participants: the participants whose answers count.
    """
    study: str
    metric: str
    method: str
    value: float
    ci_low: float
    ci_high: float
    selections: int
    answers: int
    participants: int


def _float(text: str) -> float:
    return float('nan') if text == '' else float(text)


def _cell(value: float) -> str:
    return '' if math.isnan(value) else f'{value:.6f}'


def format_win_rates(rows: Iterable[WinRateRow]) -> str:
    """The text of a ``win_rates.csv`` (header :data:`WIN_RATE_FIELDS`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(WIN_RATE_FIELDS)
    for row in rows:
        writer.writerow([row.study, row.metric, row.method, _cell(row.value), _cell(row.ci_low), _cell(row.ci_high),
                         row.selections, row.answers, row.participants])
    return out.getvalue()


def write_win_rates(path: PathLike, rows: Iterable[WinRateRow]) -> Path:
    """Write ``rows`` as ``win_rates.csv``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_win_rates(rows), encoding='utf-8')
    return path


def read_win_rates(path: PathLike) -> List[WinRateRow]:
    """Read a ``win_rates.csv``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a win-rate CSV (wrong header, a value that is not a number); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'user-study CSV {path} does not exist')
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != WIN_RATE_FIELDS:
            raise ValueError(f'{path} is not a win_rates.csv of `portraitisr study results`: its header is '
                             f'{reader.fieldnames}, expected {list(WIN_RATE_FIELDS)}')
        rows = []
        for line, record in enumerate(reader, start=2):
            try:
                rows.append(WinRateRow(record['study'], record['metric'], record['method'], _float(record['value']),
                                       _float(record['ci_low']), _float(record['ci_high']),
                                       int(record['selections']), int(record['answers']),
                                       int(record['participants'])))
            except (TypeError, ValueError) as error:
                raise ValueError(f'{path}, line {line}: {error}') from None
    return rows
