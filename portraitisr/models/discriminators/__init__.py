"""Discriminators for adversarial losses (the face adversarial term of HeadsUp, arXiv 2510.09924, Eq. 2;
AuthFace's eye and mouth discriminators, AuthFace, arXiv 2410.09864, section 3.2)."""
from .facial_component_discriminator import FacialComponentDiscriminator
from .patch_discriminator import FacePatchDiscriminator

__all__ = ['FacePatchDiscriminator', 'FacialComponentDiscriminator']
