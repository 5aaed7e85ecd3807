"""Data samplers (registered in ``DATA_SAMPLERS``)."""
from .mixture_sampler import MixtureSampler

__all__ = ['MixtureSampler']
