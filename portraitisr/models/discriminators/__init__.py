"""Discriminators for adversarial losses (the face adversarial term of HeadsUp, paper 000 Eq. 2)."""
from .patch_discriminator import FacePatchDiscriminator

__all__ = ['FacePatchDiscriminator']
