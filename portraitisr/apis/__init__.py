"""High-level APIs: :class:`PortraitRestorer` and the model zoo (weights themselves: :mod:`portraitisr.weights`).

Kept light: ``PortraitRestorer`` (torch, the models) is imported on first access only.
"""
from typing import Any

__all__ = ['PortraitRestorer', 'model_zoo']


def __getattr__(name: str) -> Any:
    if name == 'PortraitRestorer':
        # torch, diffusers and every model: `import portraitisr.apis` (the model zoo, the CLI) must not load them
        from .portrait_restorer import PortraitRestorer
        return PortraitRestorer
    if name == 'model_zoo':
        import importlib
        return importlib.import_module(f'{__name__}.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
