"""Images with one caption each, for text-to-image fine-tuning (AuthFace stage I; AuthFace, arXiv 2410.09864, section
3.1).

The caption of ``photos/0001.png`` is the text file ``photos/0001.txt`` (or ``<caption_root>/0001.txt``), the
layout text-to-image fine-tuning tools share; AuthFace's captions are tag-style prompts written by a
photography-guided captioner (LLaVA-1.6, Fig. 2), produced offline. Captions can also be given inline
(``captions={'0001.png': '...'}``), which the debug configs use for the package's sample photos.
"""
import os
from typing import Dict, Optional

from portraitisr.registry import DATASETS
from .image_folder_dataset import ImageFolderDataset
from .sample_images import is_sample


@DATASETS.register_module()
class CaptionedImageDataset(ImageFolderDataset):
    """:class:`ImageFolderDataset` whose items also carry ``metainfo['caption']``.

    Args:
        caption_ext: extension of the caption file beside each image (``.txt``).
        caption_root: folder of the caption files instead (same base names), or None.
        captions: inline captions keyed by image file name (``metainfo['name']``), taking precedence over files.
        missing_caption: ``'error'`` (every image needs a caption; checked when the dataset is built) or
            ``'empty'`` (an image without one gets ``''``).
        Other arguments: as :class:`ImageFolderDataset` (``resize=1024`` for AuthFace's fixed 1024 x 1024 training
        resolution of FFHQ-aligned portraits).
    """

    def __init__(self, *args, caption_ext: str = '.txt', caption_root: Optional[str] = None,
                 captions: Optional[Dict[str, str]] = None, missing_caption: str = 'error', **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if missing_caption not in ('error', 'empty'):
            raise ValueError(f"missing_caption must be 'error' or 'empty', got {missing_caption!r}")
        self.caption_ext, self.caption_root = caption_ext, caption_root
        self.captions = {str(k): str(v) for k, v in (captions or {}).items()}
        self.missing_caption = missing_caption
        missing = [p for p in self.paths if self._caption_source(p) is None]
        if missing and missing_caption == 'error':
            raise FileNotFoundError(f'{len(missing)} of {len(self.paths)} images have no caption (inline or '
                                    f'{self.caption_file(missing[0])!r}), e.g. {missing[0]!r}; '
                                    "pass missing_caption='empty' to train them with the empty prompt")
        self.metainfo = dict(self.metainfo, dataset_type='captioned_images',
                             num_captioned=len(self.paths) - len(missing))

    @staticmethod
    def _name(path: str) -> str:
        return os.path.basename(path.rstrip('/'))

    def caption_file(self, path: str) -> str:
        """Where the caption of image ``path`` is read from (``.txt`` beside it, or in ``caption_root``)."""
        stem = os.path.splitext(self._name(path))[0]
        folder = self.caption_root if self.caption_root is not None else os.path.dirname(path)
        return os.path.join(folder, stem + self.caption_ext)

    def _caption_source(self, path: str) -> Optional[str]:
        if self._name(path) in self.captions:
            return 'inline'
        if not is_sample(path) and os.path.isfile(self.caption_file(path)):
            return 'file'
        return None

    def caption(self, path: str) -> str:
        """The caption of image ``path`` (whitespace-stripped; line breaks become spaces)."""
        source = self._caption_source(path)
        if source == 'inline':
            return self.captions[self._name(path)]
        if source == 'file':
            with open(self.caption_file(path), encoding='utf-8') as f:
                return ' '.join(f.read().split())
        if self.missing_caption == 'empty':
            return ''
        raise FileNotFoundError(f'no caption for {path!r} (expected {self.caption_file(path)!r})')

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item['metainfo']['caption'] = self.caption(self.paths[index % len(self.paths)])
        return item
