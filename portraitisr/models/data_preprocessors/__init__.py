from .idfsr_data_preprocessor import IDFSRDataPreprocessor
from .portrait_data_preprocessor import PortraitDataPreprocessor
from .sr_data_preprocessor import SRDataPreprocessor

__all__ = ['PortraitDataPreprocessor', 'SRDataPreprocessor', 'IDFSRDataPreprocessor']
