"""A concatenation of named datasets, to be drawn from in given ratios by :class:`MixtureSampler`."""
import bisect
from typing import List, Optional, Sequence, Union

from torch.utils.data import ConcatDataset, Dataset

from portraitisr.registry import DATASETS


@DATASETS.register_module()
class MixedDataset(ConcatDataset):
    """Several datasets behind one index range, each with a name (HeadsUp: PortraitSR-4K, FFHQ, LSDIR, DIV2K).

    mmengine's own ``ConcatDataset`` needs ``BaseDataset`` members with a shared ``metainfo``; the portraitisr
    datasets are plain torch datasets whose items differ (a portrait triplet has ``ref``, an image folder does
    not), hence this class. Index ``i`` belongs to sub-dataset ``k`` when
    ``cumulative_sizes[k - 1] <= i < cumulative_sizes[k]`` (torch's ``ConcatDataset`` rule).

    Args:
        datasets: dataset configs (built from ``DATASETS``) or dataset instances.
        names: one name per dataset, written to every item's ``metainfo['dataset']`` (replacing what the
            sub-dataset put there, e.g. a :class:`PortraitTripletDataset`'s manifest stem): the mixture's
            names are what per-dataset logging should see. Without ``names``: a dataset's ``name``
            attribute when it has one, else its class name followed by its position, and then only items
            without a ``'dataset'`` get it.
    """

    def __init__(self, datasets: Sequence[Union[dict, Dataset]], names: Optional[Sequence[str]] = None) -> None:
        datasets = [DATASETS.build(d) if isinstance(d, dict) else d for d in datasets]
        if not datasets:
            raise ValueError('MixedDataset needs at least one dataset')
        self.override_names = names is not None
        if names is None:
            names = [getattr(d, 'name', None) or f'{type(d).__name__}{i}' for i, d in enumerate(datasets)]
        names = [str(n) for n in names]
        if len(names) != len(datasets):
            raise ValueError(f'{len(names)} names for {len(datasets)} datasets')
        if len(set(names)) != len(names):
            raise ValueError(f'dataset names must be unique, got {names}')
        super().__init__(datasets)
        self.names: List[str] = names
        self.metainfo = dict(dataset_type='mixed', names=list(names), sizes=self.sizes)

    @property
    def sizes(self) -> List[int]:
        """Length of each sub-dataset."""
        return [len(d) for d in self.datasets]

    def locate(self, index: int):
        """``(sub-dataset index, index within it)`` of a global ``index``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for a mixture of {len(self)} samples')
        k = bisect.bisect_right(self.cumulative_sizes, index)
        return k, index - (self.cumulative_sizes[k - 1] if k else 0)

    def __getitem__(self, index: int) -> dict:
        k, local = self.locate(index)
        item = self.datasets[k][local]
        if isinstance(item, dict):
            metainfo = item.setdefault('metainfo', {})
            if self.override_names:
                metainfo['dataset'] = self.names[k]
            else:
                metainfo.setdefault('dataset', self.names[k])
        return item
