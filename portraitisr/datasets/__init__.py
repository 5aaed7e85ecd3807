from .image_folder_dataset import ImageFolderDataset, PairedImageFolderDataset
from .sample_images import SAMPLE_IMAGES, load_sample_image

__all__ = ['ImageFolderDataset', 'PairedImageFolderDataset', 'SAMPLE_IMAGES', 'load_sample_image']
