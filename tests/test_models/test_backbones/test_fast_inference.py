"""The fast inference path: merged-LoRA copy in bf16 / fp32 vs the unmerged fp32 backbone, and training afterwards.

Tolerances (tiny random SD, LoRA and conv_in perturbed as after training, astronaut photo, 128 x 128 output):
- merged fp32 vs unmerged fp32: max |diff| <= 1e-4 on [0, 1] images (only the summation order changes);
- merged bf16 vs unmerged fp32: mean |diff| <= 1.5e-2 and max |diff| <= 0.15. bf16 keeps 8 mantissa bits
  (relative rounding 2^-9 per op) and the one-step update divides by sqrt(abar_999) = 0.068 (SD 2.1's
  scaled-linear schedule at t = 999, the one step of cswry/OSEDiff osediff.py), amplifying the UNet's rounding
  about 15 times; measured here 0.006 mean, 0.07 max.
"""
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.optim import OptimWrapper, OptimWrapperDict

from portraitisr.registry import MODELS
from tests.helpers.data_files import REPO_ROOT

SIZE = 128
BF16_MEAN_TOL, BF16_MAX_TOL = 1.5e-2, 0.15
FP32_TOL = 1e-4


def _build(name: str = 'osediff_tiny.py'):
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / 'debug' / name))
    model_cfg = dict(cfg.model)
    # inference and a plain generator step need neither the VSD regulariser nor the LPIPS-VGG weights
    for key in ('regularizer', 'lpips_loss', 'face_fidelity_loss', 'identity_loss', 'identity_aligner',
                'discriminator', 'adversarial_loss'):
        if key in model_cfg:
            model_cfg[key] = None
    model = MODELS.build(model_cfg).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B is zero at init: give every trainable tensor a value, as after training
        for param in model.backbone.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


@pytest.fixture(scope='module')
def osediff():
    return _build()


@pytest.fixture(scope='module')
def photo():
    from skimage import data

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(SIZE, SIZE), mode='bicubic', antialias=True).clamp(0, 1)


def _restore(model, lq, **kwargs):
    torch.manual_seed(0)  # the VAE posterior sample
    with torch.no_grad():
        return model.restore(lq, **kwargs)


def test_merged_copy_matches_unmerged_fp32(osediff, photo):
    reference = _restore(osediff, photo)
    osediff.enable_fast_inference('float32')
    merged = _restore(osediff, photo)
    osediff.enable_fast_inference('bfloat16')
    fast = _restore(osediff, photo)
    osediff.disable_fast_inference()
    again = _restore(osediff, photo)

    torch.testing.assert_close(merged, reference, atol=FP32_TOL, rtol=0)
    diff = (fast - reference).abs()
    assert fast.dtype == torch.float32 and fast.shape == reference.shape
    assert diff.mean() <= BF16_MEAN_TOL and diff.max() <= BF16_MAX_TOL, (diff.mean(), diff.max())
    assert diff.max() > 0  # it did run in bf16
    torch.testing.assert_close(again, reference, atol=0, rtol=0)  # the trained backbone was not touched


def test_inference_copy_is_plain_bf16_without_lora(osediff):
    from peft.tuners.tuners_utils import BaseTunerLayer

    fast = osediff.backbone.inference_copy('bfloat16')
    assert not any(isinstance(m, BaseTunerLayer) for m in fast.modules())
    assert {p.dtype for p in fast.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in fast.parameters())
    # the original keeps its float32 LoRA and its trainable tensors
    assert any(isinstance(m, BaseTunerLayer) for m in osediff.backbone.modules())
    assert all(p.dtype == torch.float32 for p in osediff.backbone.parameters() if p.requires_grad)
    with pytest.raises(RuntimeError, match='inference copy'):
        fast.save_trainable('unused.safetensors')
    with pytest.raises(RuntimeError, match='inference copy'):
        fast.train()


def test_batched_restore_equals_one_by_one(osediff, photo):
    osediff.enable_fast_inference('float32')
    try:
        batch = torch.cat([photo, photo.flip(-1)])
        together = _restore(osediff, batch)
        torch.manual_seed(0)
        with torch.no_grad():
            first = osediff.restore(batch[:1])
    finally:
        osediff.disable_fast_inference()
    assert together.shape == batch.shape
    # image 0 draws the first posterior noise in both runs
    torch.testing.assert_close(together[:1], first, atol=1e-4, rtol=0)


def test_prompt_embeddings_are_cached_on_device_at_inference(osediff, photo):
    calls = []
    original = osediff.text_encoder.forward

    def counting(prompts):
        calls.append(list(prompts))
        return original(prompts)

    osediff.text_encoder.forward = counting
    try:
        osediff._prompt_cache.clear()
        with torch.no_grad():
            first = osediff.prompt_embeddings(photo, [{}])
            second = osediff.prompt_embeddings(photo, [{}])
        with torch.enable_grad():  # training-style calls bypass the device cache
            osediff.prompt_embeddings(photo, [{}])
    finally:
        del osediff.text_encoder.forward
    assert second is first
    assert len(calls) == 2


def test_training_after_fast_inference_sees_unmerged_weights(tmp_path, photo):
    from safetensors.torch import load_file

    model = _build()
    model.enable_fast_inference('bfloat16')
    _restore(model, photo)
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    wrappers = OptimWrapperDict(backbone=OptimWrapper(torch.optim.AdamW(params, lr=1e-3)))
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    model.train()
    assert model.inference_backbone is model.backbone  # stale merged copy dropped
    batch = dict(gt=[torch.rand(3, 64, 64) for _ in range(2)], metainfo=[dict(index=0), dict(index=1)])
    log = model.train_step(batch, wrappers)
    assert torch.isfinite(log['loss'])
    changed = {n for n, p in model.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all('lora_' in n or 'conv_in' in n for n in changed)

    path = tmp_path / 'trainable.safetensors'
    model.backbone.save_trainable(str(path))
    saved = load_file(str(path))
    assert set(saved) == {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    # the saved base conv_in is the trained one, not a LoRA-merged one
    torch.testing.assert_close(saved['unet.conv_in.base_layer.weight'],
                               model.backbone.unet.conv_in.base_layer.weight.detach())
