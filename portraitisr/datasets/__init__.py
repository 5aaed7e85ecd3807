from .aligned_face_dataset import AlignedFaceDataset
from .captioned_image_dataset import CaptionedImageDataset
from .collate import portrait_collate
from .image_folder_dataset import ImageFolderDataset, PairedImageFolderDataset
from .mixture import MixedDataset
from .portrait_triplet_dataset import (ManifestError, PortraitDataError, PortraitTripletDataset, load_manifest,
                                       manifest_line)
from .sample_images import SAMPLE_IMAGES, load_sample_image
from .samplers import MixtureSampler

__all__ = ['AlignedFaceDataset', 'CaptionedImageDataset',
           'ImageFolderDataset', 'PairedImageFolderDataset', 'SAMPLE_IMAGES', 'load_sample_image',
           'PortraitTripletDataset', 'ManifestError', 'PortraitDataError', 'load_manifest', 'manifest_line',
           'MixedDataset', 'MixtureSampler', 'portrait_collate']
