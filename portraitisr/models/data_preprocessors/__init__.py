from .portrait_data_preprocessor import PortraitDataPreprocessor
from .sr_data_preprocessor import SRDataPreprocessor

__all__ = ['PortraitDataPreprocessor', 'SRDataPreprocessor']
