"""High-level APIs: :class:`PortraitRestorer`, the model zoo, the weight resolver.

Kept light: ``PortraitRestorer`` (torch, the models) is imported on first access only.
"""
from typing import Any

__all__ = ['PortraitRestorer', 'model_zoo', 'weight_resolver']


def __getattr__(name: str) -> Any:
    if name == 'PortraitRestorer':
        from .portrait_restorer import PortraitRestorer
        return PortraitRestorer
    if name in ('model_zoo', 'weight_resolver'):
        import importlib
        return importlib.import_module(f'{__name__}.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
