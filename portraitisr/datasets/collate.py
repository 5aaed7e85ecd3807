"""Collating batches whose samples come from different datasets (``collate_fn=dict(type='portrait_collate')``)."""
from typing import Any, Dict, List, Sequence

import mmengine.dataset  # noqa: F401  registers mmengine's collates (pseudo_collate, ...), our registry's parents
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS

from portraitisr.registry import FUNCTIONS

#: Keys collated first, in this order; any other keys of the items follow in order of first appearance.
_KNOWN_KEYS = ('gt', 'lq', 'ref')


@FUNCTIONS.register_module()
def portrait_collate(data_batch: Sequence[dict]) -> Dict[str, List[Any]]:
    """A list of dataset items -> a dict of per-sample lists, tolerant of items with different keys.

    A mixture batch may hold :class:`ImageFolderDataset` items (``gt`` and ``metainfo``) next to
    :class:`PortraitTripletDataset` items (also ``ref``, which may be None). mmengine's ``default_collate``
    cannot stack None and ``pseudo_collate`` transposes ``metainfo`` into a dict of lists (and fails when the
    dicts have different keys), so this collate only groups:

    - each data key (``gt``, ``lq``, ``ref``, then any other) that at least one item has becomes a list with
      one entry per sample, None where an item lacks the key; keys no item has are absent;
    - ``metainfo`` becomes the list of the items' own dicts (not transposed; ``{}`` where missing).

    Tensors are not stacked here: sizes may differ between datasets, and the data preprocessor stacks them
    on the device (:class:`~portraitisr.models.PortraitDataPreprocessor`).
    """
    data_batch = list(data_batch)
    for i, item in enumerate(data_batch):
        if not isinstance(item, dict):
            raise TypeError(f'portrait_collate expects dict items, item {i} is {type(item).__name__}')
    keys = [k for k in _KNOWN_KEYS if any(k in item for item in data_batch)]
    for item in data_batch:
        keys += [k for k in item if k != 'metainfo' and k not in keys]
    batch: Dict[str, List[Any]] = {key: [item.get(key) for item in data_batch] for key in keys}
    batch['metainfo'] = [item.get('metainfo') or {} for item in data_batch]
    return batch


# mmengine's ``Runner.build_dataloader`` looks collate functions up in its root registry and, unlike ``build``,
# ignores the default scope there; so ``collate_fn=dict(type='portrait_collate')`` needs the name at the root too
# (``'portraitisr.portrait_collate'`` finds the scoped one). Importing any portraitisr dataset registers it, and
# the runner builds the dataset before it looks up the collate function.
MMENGINE_FUNCTIONS.register_module(name='portrait_collate', module=portrait_collate, force=True)
