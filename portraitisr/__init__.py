"""portraitisr: portrait image super-resolution (HeadsUp, OSEDiff and blending baselines).

Importing the package is cheap on purpose: components register themselves when a registry first
builds something (``locations=`` in :mod:`portraitisr.registry`), so ``import portraitisr`` never
imports diffusers, kornia or anything that touches the network.
"""
from .version import __version__

__all__ = ['__version__']
