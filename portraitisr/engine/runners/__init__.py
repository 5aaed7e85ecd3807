from .portrait_runner import PortraitRunner

__all__ = ['PortraitRunner']
