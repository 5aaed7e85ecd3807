"""Discriminators for adversarial losses (the face adversarial term of HeadsUp, paper 000 Eq. 2;
AuthFace's eye and mouth discriminators, paper 004 section 3.2)."""
from .facial_component_discriminator import FacialComponentDiscriminator
from .patch_discriminator import FacePatchDiscriminator

__all__ = ['FacePatchDiscriminator', 'FacialComponentDiscriminator']
