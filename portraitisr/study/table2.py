"""Merge user-study win rates into Table 2: ``tools/test.py --user-study RESULTS/win_rates.csv ...``.

HeadsUp (arXiv 2510.09924, Table 2) reports WR_id and WR_N next to the metrics; ``portraitisr study results`` writes
them to
``win_rates.csv`` (:mod:`.win_rates`) and :func:`merge_user_study` puts them into the ``'portrait'`` rows of a
:class:`~portraitisr.evaluation.tables.ResultTables` whose method has the same name. This module imports the
evaluation package (and so torch); the rest of the study package does not.
"""
from __future__ import annotations

import os
from typing import Iterable, List, Union

from portraitisr.evaluation.tables import TABLE_LAYOUTS, ResultTables
from .win_rates import TABLE2_METRICS, read_win_rates

__all__ = ['merge_user_study']

PathLike = Union[str, 'os.PathLike[str]']


def merge_user_study(tables: ResultTables, paths: Iterable[PathLike], table: str = 'portrait') -> List[str]:
    """Put the WR_id / WR_N win rates of ``win_rates.csv`` files into the rows of ``table``.

    A row gets a study's value when its method has the study's method name; ``tools/test.py`` names its rows
    ``cfg.method_name`` (else the config's file name), so a study made with ``--method <that name>=DIR`` lands in
    the right row. Rows of other methods keep the columns empty.

    Args:
        tables: the tables to complete (changed in place).
        paths: ``win_rates.csv`` files; each must hold ``WR_id`` or ``WR_N`` rows (``AB_win`` rows are skipped).
        table: the layout holding the columns.

    Returns:
        The study methods that matched no row of ``table`` (so a caller can tell the user about a name mismatch).

    Raises:
        ValueError: a file without any Table 2 metric, or two files giving the same metric for the same method.
    """
    if table not in TABLE_LAYOUTS:
        raise KeyError(f'unknown table {table!r}; choose from {", ".join(TABLE_LAYOUTS)}')
    columns = {name for _, name in TABLE_LAYOUTS[table][1]}
    values: dict = {}
    for path in paths:
        rows = [row for row in read_win_rates(path) if row.metric in TABLE2_METRICS]
        if not rows:
            raise ValueError(f'{path} has no {" or ".join(TABLE2_METRICS)} rows (an A/B study has no Table 2 '
                             'column)')
        for row in rows:
            if row.metric not in columns:
                raise ValueError(f'table {table!r} has no {row.metric} column')
            key = (row.method, row.metric)
            if key in values:
                raise ValueError(f'{row.metric} of {row.method!r} is given twice (again in {path})')
            values[key] = row.value
    matched = set()
    for row_table, _, method, metrics in tables.rows:
        if row_table != table:
            continue
        for (name, metric), value in values.items():
            if name == method:
                metrics[metric] = value
                matched.add(name)
    return sorted({name for name, _ in values} - matched)
