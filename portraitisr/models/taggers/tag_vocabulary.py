"""RAM's tag vocabulary: the tag names and the class-specific decision thresholds.

Both come from text files published with RAM (xinyu1205/recognize-anything ``ram/data/``, identical in
cswry/OSEDiff): ``ram_tag_list.txt`` (4585 English tags, one per line, read with ``str.splitlines``) and
``ram_tag_list_threshold.txt`` (4585 floats, one per line). They are obtained like weights (model-zoo entries
``ram_tag_list`` and ``ram_tag_list_threshold``, through the weight resolver), not shipped with the package.

A tag is output when ``sigmoid(logit) > threshold`` (strict). ``RAMLora.__init__`` (OSEDiff
``ram/models/ram_lora.py``) turns the file's values into thresholds with two knobs, ``max_threthold=0.9`` and
``add_threthold=0``: a value above ``max_threshold`` is kept as it is; any other becomes
``min(value + add_threshold, max_threshold)``. With the defaults this is the file itself.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Union

import torch

__all__ = ['read_tag_list', 'read_thresholds', 'class_thresholds']

PathLike = Union[str, 'os.PathLike[str]']


def read_tag_list(path: PathLike) -> list[str]:
    """The tag names of ``path`` in file order (``f.read().splitlines()``, as ``RAMLora.load_tag_list``)."""
    with open(path, encoding='utf-8') as f:
        tags = f.read().splitlines()
    if not tags:
        raise ValueError(f'tag list {path} is empty')
    return tags


def read_thresholds(path: PathLike) -> list[float]:
    """One float per line of ``path`` (``[float(s.strip()) for s in f]``, as ``RAMLora.__init__``)."""
    values = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            try:
                values.append(float(line.strip()))
            except ValueError:
                raise ValueError(f'{path}, line {number}: {line.strip()!r} is not a threshold') from None
    return values


def class_thresholds(values: Union[float, Sequence[float]], num_tags: int, max_threshold: float = 0.9,
                     add_threshold: float = 0.0) -> torch.Tensor:
    """``num_tags`` float32 thresholds from one value for every tag or one value per tag, by RAMLora's rule.

    ``RAMLora`` starts from ``threshold`` (0.68) for every class and then overwrites each class with the file's
    value through the rule in the module docstring; a single value here is used as RAMLora uses its ``threshold``
    argument (no rule applied). Thresholds are computed in float32 as RAMLora's ``torch.ones(...) * threshold``
    tensor stores them.
    """
    if isinstance(values, (int, float)):
        return torch.full((num_tags,), float(values), dtype=torch.float32)
    values = [float(v) for v in values]
    if len(values) != num_tags:
        raise ValueError(f'{len(values)} thresholds for {num_tags} tags; the tag list and the threshold file '
                         'must have one line per tag each')
    return torch.tensor([v if v > max_threshold else min(v + add_threshold, max_threshold) for v in values],
                        dtype=torch.float32)
