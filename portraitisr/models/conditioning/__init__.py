"""Conditioning plug-ins usable by any restorer: reference warping, face-region masking and identity embeddings.

IDFSR ("IDFSR: Personalized Face Super-Resolution with Identity Decoupling and Fitting") combines all three; each is
registered in ``MODELS`` and works alone.
"""
from .face_region_mask import FaceRegionMasker, face_ellipse_mask
from .identity_cross_attention import IdentityCrossAttention, identity_tokens
from .identity_embedder import (IDENTITY_FILE_FORMAT, IdentityEmbedder, load_identity_embedding,
                                save_identity_embedding, verification_threshold)
from .reference_warper import (ReferenceWarper, affine_warp, border_anchors, delaunay_triangles, estimate_affine_lstsq,
                               piecewise_affine_coords, piecewise_affine_warp)

__all__ = ['FaceRegionMasker', 'face_ellipse_mask', 'IdentityEmbedder', 'IDENTITY_FILE_FORMAT',
           'load_identity_embedding', 'save_identity_embedding', 'verification_threshold', 'IdentityCrossAttention',
           'identity_tokens', 'ReferenceWarper', 'affine_warp', 'border_anchors', 'delaunay_triangles',
           'estimate_affine_lstsq', 'piecewise_affine_coords', 'piecewise_affine_warp']
