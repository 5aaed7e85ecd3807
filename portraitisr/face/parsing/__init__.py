"""Face parsers (``FACE_PARSERS``): aligned face -> per-pixel facial-component probabilities."""
from .facexlib_parser import FACEXLIB_PARSING_WEIGHTS, FacexlibFaceParser

__all__ = ['FACEXLIB_PARSING_WEIGHTS', 'FacexlibFaceParser']
