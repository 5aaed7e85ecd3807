from .portrait_flexible_runner import PortraitFlexibleRunner
from .portrait_runner import PortraitRunner

__all__ = ['PortraitRunner', 'PortraitFlexibleRunner']
