"""IDFSR's plug-ins used on their own: the face-region mask (section 3.1), identity cross-attention (appendix E.2)
and identity embeddings from a registered extractor, with the fitted-identity file format."""
import numpy as np
import pytest
import torch

from portraitisr.face.alignment.templates import FFHQ_512
from portraitisr.models.conditioning import (IdentityEmbedder, face_ellipse_mask,
                                             load_identity_embedding, save_identity_embedding, verification_threshold)
from portraitisr.registry import MODELS


def test_face_mask_is_the_stated_ellipse_and_follows_the_face():
    mask = face_ellipse_mask(torch.from_numpy(FFHQ_512), 512)
    assert mask.shape == (1, 1, 512, 512) and set(mask.unique().tolist()) == {0.0, 1.0}
    ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
    # FaceRegionMasker's docstring: x 126-388, y 136-476 on the FFHQ 512 template
    assert (int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())) == (126, 387, 136, 476)
    # eyes, nose and mouth are inside; the image corners are not
    for x, y in FFHQ_512.round().astype(int):
        assert mask[0, 0, y, x] == 1
    assert mask[0, 0, :20, :20].sum() == 0
    # a face rotated by 90 degrees (about the image centre) gets the rotated mask
    rotated = torch.from_numpy(np.stack([511 - FFHQ_512[:, 1], FFHQ_512[:, 0]], -1))
    turned = face_ellipse_mask(rotated[[1, 0, 2, 4, 3]], 512)  # left/right swap under rotation is irrelevant here
    assert (turned[0, 0] != torch.rot90(mask[0, 0], -1)).float().mean() < 0.002


def test_masker_fills_only_the_face_and_is_registered():
    masker = MODELS.build(dict(type='FaceRegionMasker', fill=0.5))
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    landmarks = torch.from_numpy(FFHQ_512 / 8).float().expand(2, 5, 2)
    masked, mask = masker(images, landmarks)
    assert torch.equal(masked[mask.expand_as(masked) > 0], torch.full_like(masked[mask.expand_as(masked) > 0], 0.5))
    assert torch.equal(masked[mask.expand_as(masked) == 0], images[mask.expand_as(masked) == 0])
    masked.sum().backward()
    assert torch.equal(images.grad, (1 - mask).expand_as(images))
    with pytest.raises(ValueError, match='landmarks must be B x 5 x 2'):
        masker(images, torch.zeros(2, 68, 2))


def test_identity_cross_attention_starts_as_identity_and_attends_to_tokens():
    torch.manual_seed(0)
    block = MODELS.build(dict(type='IdentityCrossAttention', channels=8, id_channels=6, num_heads=2))
    x = torch.randn(3, 8, 5, 4)
    z = torch.randn(3, 6, requires_grad=True)
    assert torch.equal(block(x, z), x)  # proj_out starts at zero
    assert torch.equal(block(x, None), x)
    torch.nn.init.normal_(block.proj_out.weight)
    out = block(x, z)
    # one token: the softmax is 1, every position gets proj_out(W_v z)
    v = block.kv(z)[:, 8:]
    expected = x + block.proj_out(v[..., None]).reshape(3, 8, 1, 1)
    assert torch.allclose(out, expected, atol=1e-6)
    out.sum().backward()
    assert z.grad.abs().sum() > 0
    # several tokens: ordinary scaled dot-product attention per head
    tokens = torch.randn(3, 4, 6)
    q = block.q(block.norm(x.reshape(3, 8, -1))).reshape(3, 2, 4, -1)
    k, v = block.kv(tokens).chunk(2, -1)
    k, v = k.reshape(3, 4, 2, 4).permute(0, 2, 3, 1), v.reshape(3, 4, 2, 4).permute(0, 2, 3, 1)
    weights = torch.softmax(torch.einsum('bhct,bhcn->bhtn', q, k) / 2.0, -1)
    h = torch.einsum('bhtn,bhcn->bhct', weights, v).reshape(3, 8, -1)
    assert torch.allclose(block(x, tokens), x + block.proj_out(h).reshape(3, 8, 5, 4), atol=1e-5)
    with pytest.raises(ValueError, match='identity embeddings must have 6 channels'):
        block(x, torch.randn(3, 7))


def test_identity_embedder_uses_any_registered_extractor():
    from portraitisr.datasets import load_sample_image

    image = torch.from_numpy(load_sample_image('sample://astronaut')).permute(2, 0, 1)[None]
    landmarks = torch.tensor([[[203.17, 101.5], [246.5, 104.17], [225.0, 127.0], [201.0, 139.0], [246.0, 141.0]]])
    dlib = MODELS.build(dict(type='IdentityEmbedder', extractor=dict(type='DlibResNet')))
    assert dlib.embedding_dim == 128
    with torch.no_grad():
        a = dlib(image, landmarks)
        b = dlib(image.flip(-1), torch.stack([511 - landmarks[..., 0], landmarks[..., 1]], -1)[:, [1, 0, 2, 4, 3]])
    assert a.shape == (1, 128) and torch.allclose(a.norm(dim=1), torch.ones(1))
    assert float((a * b).sum()) > 0.9  # the mirrored astronaut is the same person
    torch.manual_seed(0)
    arcface = IdentityEmbedder(dict(type='ArcFaceIResNet', depth=18))
    image.requires_grad_(True)
    embedding = arcface(image, landmarks)
    assert embedding.shape == (1, 512)
    embedding.sum().backward()
    assert image.grad.abs().sum() > 0 and not any(p.requires_grad for p in arcface.parameters())


def test_identity_file_round_trip_and_errors(tmp_path):
    path = tmp_path / 'person.safetensors'
    identity = torch.randn(512)
    save_identity_embedding(path, identity, dict(photos='["a.png"]', steps=10))
    loaded, meta = load_identity_embedding(path)
    assert torch.equal(loaded, identity) and meta['steps'] == '10' and meta['embedding_dim'] == '512'
    from safetensors.torch import save_file
    save_file({'weights': torch.zeros(3)}, str(tmp_path / 'other.safetensors'))
    with pytest.raises(ValueError, match='is not an identity embedding file'):
        load_identity_embedding(tmp_path / 'other.safetensors')
    (tmp_path / 'junk.safetensors').write_bytes(b'not a file')
    with pytest.raises(ValueError, match='is not a safetensors file'):
        load_identity_embedding(tmp_path / 'junk.safetensors')


def test_verification_threshold_is_read_from_the_extractor():
    class WithThreshold(torch.nn.Module):
        verification_threshold = 0.31

    class Without(torch.nn.Module):
        pass

    class Unpublished(torch.nn.Module):
        verification_threshold = None
        verification_source = 'no published verification threshold'

    assert verification_threshold(WithThreshold()) == 0.31
    with pytest.raises(ValueError, match='Without has no verification_threshold'):
        verification_threshold(Without())
    with pytest.raises(ValueError, match='no published verification threshold'):
        verification_threshold(Unpublished())
