"""Identity embeddings of faces from any registered identity extractor (IDFSR's ``z_id = E_id(I)``, section 3.1),
and the file format of a fitted identity embedding (IDFSR stage 2, section 3.3).

:class:`IdentityEmbedder` aligns each face from its five landmarks to the extractor's template (ArcFace 112 by
default, the crop every extractor of ``IDENTITY_EXTRACTORS`` takes) and returns the L2-normalised embedding. The
extractor is frozen and stays in eval mode; gradients still reach the images.

A fitted identity is a safetensors file with one tensor ``identity`` (``D`` or ``N x D`` float32) and string
metadata (``format``, ``embedding_dim``, ``extractor``, ``photos``, ``steps``, ``loss``...), written by
:func:`save_identity_embedding` and read, without unpickling anything, by :func:`load_identity_embedding`.
"""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from portraitisr.registry import FACE_ALIGNERS, IDENTITY_EXTRACTORS, MODELS

__all__ = ['IdentityEmbedder', 'save_identity_embedding', 'load_identity_embedding', 'IDENTITY_FILE_FORMAT',
           'verification_threshold']

IDENTITY_FILE_FORMAT = 'portraitisr.identity/1'


def verification_threshold(extractor: nn.Module) -> float:
    """The cosine-similarity threshold above which ``extractor`` calls two faces the same person.

    Read from the extractor's ``verification_threshold`` attribute (identity extractors carry their own published
    threshold); a clear ``ValueError`` when it is missing or ``None``.
    """
    value = getattr(extractor, 'verification_threshold', None)
    if value is None:
        source = getattr(extractor, 'verification_source', None)
        detail = f' ({source})' if source else ''
        raise ValueError(f'{type(extractor).__name__} has no verification_threshold{detail}: face verification '
                         'needs a threshold on the cosine similarity of its embeddings; pass threshold= explicitly '
                         'or use an identity extractor that publishes one')
    return float(value)


@MODELS.register_module()
class IdentityEmbedder(nn.Module):
    """Faces (+ landmarks) -> ``B x D`` identity embeddings, for conditioning any model on identity.

    Args:
        extractor: ``IDENTITY_EXTRACTORS`` config (IDFSR: a pretrained ArcFace).
        aligner: ``FACE_ALIGNERS`` config of the crop the extractor takes (default the ArcFace 112 template with a
            black border, insightface's ``norm_crop``, and the differentiable least-squares estimator).

    ``forward(images, landmarks=None)``: ``images`` ``B x 3 x H x W`` RGB in [0, 1]; ``landmarks`` ``B x 5 x 2`` in
    pixels of ``images`` (``None``: the images already are aligned crops of the extractor's template).
    """

    def __init__(self, extractor: dict, aligner: Optional[dict] = None) -> None:
        super().__init__()
        self.extractor = IDENTITY_EXTRACTORS.build(extractor) if isinstance(extractor, dict) else extractor
        self.aligner = FACE_ALIGNERS.build(aligner or dict(type='FaceAligner', template='arcface112',
                                                           border_value=(0, 0, 0), estimator='lstsq'))

    @property
    def embedding_dim(self) -> int:
        return int(self.extractor.embedding_dim)

    def forward(self, images: Tensor, landmarks: Optional[Tensor] = None) -> Tensor:
        faces = images if landmarks is None else self.aligner.align(images, landmarks.to(images))
        return self.extractor(faces.clamp(0, 1))


def save_identity_embedding(path, identity: Tensor, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write a fitted identity (``D`` or ``N x D``) as safetensors with string ``metadata``."""
    from safetensors.torch import save_file

    identity = identity.detach().float().cpu().contiguous()
    if identity.dim() not in (1, 2):
        raise ValueError(f'an identity embedding is D or N x D, got {tuple(identity.shape)}')
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta.update(format=IDENTITY_FILE_FORMAT, embedding_dim=str(identity.shape[-1]))
    save_file({'identity': identity}, str(path), metadata=meta)


def load_identity_embedding(path) -> Tuple[Tensor, Dict[str, str]]:
    """Read a file of :func:`save_identity_embedding`: ``(identity D or N x D float32, metadata)``.

    Raises:
        ValueError: not an identity file of this format (named in the message).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework='pt') as f:
            metadata = dict(f.metadata() or {})
            keys = list(f.keys())
            if metadata.get('format') != IDENTITY_FILE_FORMAT or keys != ['identity']:
                raise ValueError(f'{path} is not an identity embedding file ({IDENTITY_FILE_FORMAT}: one tensor '
                                 f'"identity"); found format={metadata.get("format")!r}, tensors {keys}')
            identity = f.get_tensor('identity').float()
    except SafetensorError as error:
        raise ValueError(f'{path} is not a safetensors file: {error}') from error
    if identity.dim() not in (1, 2) or not torch.isfinite(identity).all():
        raise ValueError(f'{path}: the identity embedding must be finite, D or N x D, got {tuple(identity.shape)}')
    return identity, metadata
