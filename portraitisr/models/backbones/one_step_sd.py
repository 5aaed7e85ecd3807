"""One-step Stable Diffusion restorer: SD 2.1 with LoRA on the VAE encoder and the UNet.

The backbone shared by OSEDiff and HeadsUp. An LQ image (already upscaled to the output size) is
encoded by the LoRA VAE encoder, denoised in a single UNet pass at a fixed timestep and decoded by
the frozen VAE decoder. The one-step update is the DDPM posterior mean at ``t = 999`` with
``prev_t = -1`` (cswry/OSEDiff ``osediff.py``)::

    z_H = (z_L - sqrt(1 - abar_t) * eps_theta(z_L, t, c)) / sqrt(abar_t)

which equals ``DDPMScheduler.step(eps, t, z_L).prev_sample`` after ``set_timesteps(1)``.
"""
import contextlib
import copy
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portraitisr.registry import BACKBONES
from portraitisr.weights import load_state_dict, resolve_file, resolve_pretrained_dir
from .latent_tiling import LatentTiling, tiled_unet, tiled_vae_decode, tiled_vae_encode
from .lora_targets import UNET_ADAPTERS, VAE_ADAPTER, unet_lora_targets, vae_encoder_lora_targets
from .osediff_checkpoint import load_osediff_checkpoint

_DTYPES = {'float32': torch.float32, 'fp32': torch.float32, 'bfloat16': torch.bfloat16,
           'bf16': torch.bfloat16, 'float16': torch.float16, 'fp16': torch.float16}

# Files a diffusers-layout SD folder must hold for the parts this backbone loads.
SD_REQUIRED_FILES = ('unet/config.json', 'vae/config.json', 'scheduler/scheduler_config.json')


def parse_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """``'bf16'`` / ``'bfloat16'`` / ``torch.bfloat16`` -> ``torch.bfloat16`` (clear error otherwise)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f'Unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}')
    return _DTYPES[dtype]


def cast_for_training(module: nn.Module, frozen_dtype: torch.dtype) -> None:
    """Frozen weights in ``frozen_dtype``, trainable ones (LoRA, conv_in) in float32 — diffusers'
    ``cast_training_params`` recipe for low-precision LoRA training."""
    if frozen_dtype != torch.float32:
        module.to(frozen_dtype)
    for param in module.parameters():
        if param.requires_grad:
            param.data = param.data.float()


def frozen_dtype_autocast(frozen_dtype: torch.dtype, device: torch.device):
    """Autocast to the frozen weights' dtype (a no-op for float32), so fp32 LoRA layers and
    low-precision frozen layers can be chained."""
    if frozen_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=frozen_dtype)


def widen_conv_in(unet: nn.Module, in_channels: int) -> None:
    """Replace ``unet.conv_in`` by one with ``in_channels`` inputs, extra channels zero-initialised.

    With zero weights on the new channels the widened UNet computes exactly what the pretrained
    one did, so training starts from SD's behaviour (HeadsUp, paper section 2.3: 4 LQ-latent +
    4 reference-latent + 1 face-mask channels).
    """
    old = unet.conv_in
    if in_channels == old.in_channels:
        return
    if in_channels < old.in_channels:
        raise ValueError(f'conv_in can only be widened: it has {old.in_channels} input channels, '
                         f'asked for {in_channels}')
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)


def _lora_config(rank: int, alpha: float, target_modules: Sequence[str]):
    from peft import LoraConfig

    # OSEDiff: ``LoraConfig(r=4, init_lora_weights="gaussian")`` -> A ~ N(0, 1/r), B = 0. It never
    # sets ``lora_alpha``, so peft's default of 8 applies (scaling 2); our configs pass 8 explicitly.
    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights='gaussian',
                      target_modules=list(target_modules))


def add_osediff_unet_lora(unet: nn.Module, rank: int = 4, alpha: float = 8.0) -> Dict[str, List[str]]:
    """Inject OSEDiff's three UNet adapters and activate them all. Returns the target lists."""
    targets = unet_lora_targets(unet)
    with warnings.catch_warnings():
        # peft warns that a second adapter joins the first: several adapters are OSEDiff's design.
        warnings.filterwarnings('ignore', message='Already found a `peft_config`')
        for adapter_name in UNET_ADAPTERS:
            unet.add_adapter(_lora_config(rank, alpha, targets[adapter_name]),
                             adapter_name=adapter_name)
    unet.set_adapter(list(UNET_ADAPTERS))  # ``add_adapter`` activates only the newest one
    return targets


def merge_and_unload_lora(model: nn.Module) -> None:
    """Fold every LoRA delta into its base weights and remove the peft layers (diffusers' ``fuse_lora`` then
    ``unload_lora``): one plain conv / linear per layer instead of base + A + B.

    Done in the weights' own dtype (call it on float32 weights, then cast: merging after a bf16 cast would round
    the small LoRA delta away). The model has no LoRA afterwards: use it on an inference copy only
    (:meth:`OneStepSD.inference_copy`).
    """
    if getattr(model, 'peft_config', None):
        model.fuse_lora()
        model.unload_lora()


def use_sdpa_attention(model: nn.Module) -> None:
    """PyTorch scaled-dot-product attention (flash / memory-efficient kernels on GPU) in every attention layer."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if hasattr(model, 'set_attn_processor') and getattr(model, 'attn_processors', None):
        model.set_attn_processor(AttnProcessor2_0())


@BACKBONES.register_module()
class OneStepSD(nn.Module):
    """SD UNet + VAE turned into a one-step restorer with peft LoRA (OSEDiff / HeadsUp backbone).

    Args:
        pretrained: a diffusers-layout Stable Diffusion folder or hub id (resolved offline through
            :func:`portraitisr.weights.resolve_pretrained_dir`), or None to build
            random components from the inline configs.
        unet_cfg / vae_cfg / scheduler_cfg: inline ``diffusers`` configs (tests, debug configs);
            with ``pretrained`` they override single keys of the loaded configs' scheduler only.
        in_channels: UNet input channels; 4 for OSEDiff, 9 for HeadsUp (LQ latent + reference
            latent + face mask), extra channels zero-initialised.
        timestep: the fixed timestep (999 in OSEDiff).
        lora_rank / lora_alpha: LoRA rank and alpha of every adapter (OSEDiff: 4 and 8).
        train_vae_encoder_lora: add the VAE-encoder adapter (OSEDiff: yes).
        train_conv_in: make ``conv_in``'s base weight and bias trainable (OSEDiff: yes).
        frozen_dtype: dtype of the frozen SD weights (``'float32'``, ``'bfloat16'``, ``'float16'``);
            LoRA and ``conv_in`` stay in float32 and the forward runs under autocast.
        gradient_checkpointing: diffusers' non-reentrant checkpointing on UNet and VAE.
        sample_posterior: encode with ``latent_dist.sample()`` (OSEDiff, train and test) rather
            than ``mode()``.
        init_seed: seed for the random initialisation of LoRA and of inline-config weights, so that
            every rank of a distributed run builds the same model.
        trained_weights: optional trained LoRA/conv_in weights loaded after building, resolved by
            the weight resolver: an official OSEDiff ``.pkl`` release, or a ``.safetensors`` file
            written by :meth:`save_trainable` (e.g. ``tools/export_weights.py``).
    """

    def __init__(self,
                 pretrained: Optional[str] = None,
                 unet_cfg: Optional[dict] = None,
                 vae_cfg: Optional[dict] = None,
                 scheduler_cfg: Optional[dict] = None,
                 in_channels: int = 4,
                 timestep: int = 999,
                 lora_rank: int = 4,
                 lora_alpha: float = 8.0,
                 train_vae_encoder_lora: bool = True,
                 train_conv_in: bool = True,
                 frozen_dtype: str = 'float32',
                 gradient_checkpointing: bool = False,
                 sample_posterior: bool = True,
                 init_seed: int = 0,
                 trained_weights: Optional[str] = None) -> None:
        super().__init__()
        if pretrained is None and (unet_cfg is None or vae_cfg is None):
            raise ValueError('OneStepSD needs `pretrained` (an SD folder or hub id) or both '
                             '`unet_cfg` and `vae_cfg` (inline diffusers configs).')
        self.timestep = int(timestep)
        self.sample_posterior = sample_posterior
        self.frozen_dtype = parse_dtype(frozen_dtype)
        self.lora_rank, self.lora_alpha = lora_rank, lora_alpha

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            parts = build_sd_components(pretrained, unet_cfg, vae_cfg, scheduler_cfg)
            self.unet, self.vae, scheduler = parts['unet'], parts['vae'], parts['scheduler']
            self.unet.requires_grad_(False)
            self.vae.requires_grad_(False)
            widen_conv_in(self.unet, in_channels)
            self.unet_lora_targets = self.add_unet_lora(lora_rank, lora_alpha)
            self.vae_lora_targets = []
            if train_vae_encoder_lora:
                self.vae_lora_targets = vae_encoder_lora_targets(self.vae)
                self.vae.add_adapter(_lora_config(lora_rank, lora_alpha, self.vae_lora_targets),
                                     adapter_name=VAE_ADAPTER)
        if train_conv_in:
            self.unet.conv_in.base_layer.requires_grad_(True)

        self.scheduler = scheduler
        if not 0 <= self.timestep < scheduler.config.num_train_timesteps:
            raise ValueError(f'timestep {self.timestep} outside the scheduler\'s '
                             f'[0, {scheduler.config.num_train_timesteps})')
        alpha_bar = scheduler.alphas_cumprod[self.timestep].double()
        # OSEDiff section 1: abar_999 = 0.0046601 -> alpha = 0.068265, beta = 0.997667.
        self.register_buffer('sqrt_alpha_bar', alpha_bar.sqrt().float(), persistent=False)
        self.register_buffer('sqrt_one_minus_alpha_bar', (1 - alpha_bar).sqrt().float(),
                             persistent=False)
        self.scaling_factor = float(self.vae.config.scaling_factor)

        # Only the networks: the schedule constants stay float32.
        cast_for_training(self.unet, self.frozen_dtype)
        cast_for_training(self.vae, self.frozen_dtype)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()
        self._lora_merged = False
        # Inference-only settings (see ``inference_copy`` and ``tiled``); training leaves them at their defaults.
        self.tiling: Optional[LatentTiling] = None
        self.channels_last = False
        self.inference_only = False
        if trained_weights is not None:
            self.load_trained_weights(trained_weights)

    # ------------------------------------------------------------------ properties
    @property
    def in_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def cross_attention_dim(self) -> int:
        return self.unet.config.cross_attention_dim

    @property
    def vae_downscale(self) -> int:
        return 2**(len(self.vae.config.block_out_channels) - 1)

    def add_unet_lora(self, rank: int, alpha: float) -> Dict[str, List[str]]:
        """Inject the UNet's LoRA adapters and return ``{adapter name: target modules}``.

        OSEDiff's three adapters here; a method with another adapter layout (PiSA-SR's pixel and semantic pairs)
        overrides it. Called once from ``__init__`` on the frozen UNet, under the seeded initialisation.
        """
        return add_osediff_unet_lora(self.unet, rank, alpha)

    # ------------------------------------------------------------------ maths
    def encode(self, images: Tensor) -> Tensor:
        """Images ``B x 3 x H x W`` in [0, 1] -> scaled latents ``B x 4 x H/8 x W/8`` (tiled with ``self.tiling``)."""
        images = self._memory_format(images * 2 - 1)
        if self.tiling is not None:
            from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

            t = self.tiling
            moments = tiled_vae_encode(self.vae, images, t.encode_tile, t.encode_overlap,
                                       t.margin(t.encode_overlap), t.encode_group_norm)
            posterior = DiagonalGaussianDistribution(moments)
        else:
            posterior = self.vae.encode(images).latent_dist
        latents = posterior.sample() if self.sample_posterior else posterior.mode()
        return latents * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images in [0, 1] (clamped in [-1, 1] first, as OSEDiff); tiled with ``self.tiling``."""
        latents = self._memory_format(latents / self.scaling_factor)
        if self.tiling is not None:
            t = self.tiling
            images = tiled_vae_decode(self.vae, latents, t.decode_tile, t.decode_overlap, t.margin(t.decode_overlap),
                                      t.decode_group_norm)
        else:
            images = self.vae.decode(latents).sample
        return (images.float().clamp(-1, 1) + 1) / 2

    def predict_eps(self, unet_in: Tensor, timesteps: Tensor, prompt_embeds: Tensor,
                    unet: Optional[nn.Module] = None) -> Tensor:
        """``eps_theta`` of the UNet input ``B x C x h x w`` (tiled with ``self.tiling``), by ``unet`` (default
        ``self.unet``; PiSA-SR's guidance also runs its pixel-only UNet through here)."""
        unet = self.unet if unet is None else unet
        unet_in = self._memory_format(unet_in)
        if self.tiling is not None:
            t = self.tiling
            return tiled_unet(unet, unet_in, timesteps, prompt_embeds, t.unet_tile, t.unet_overlap,
                              t.margin(t.unet_overlap))
        return unet(unet_in, timesteps, encoder_hidden_states=prompt_embeds).sample

    def _memory_format(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def one_step(self, lq_latents: Tensor, eps: Tensor) -> Tensor:
        """``z_H = (z_L - sqrt(1 - abar) * eps) / sqrt(abar)`` (float32)."""
        return (lq_latents.float() - self.sqrt_one_minus_alpha_bar * eps.float()) / self.sqrt_alpha_bar

    def reference_latents(self, ref: Optional[Tensor], has_ref: Optional[Tensor],
                          lq_latents: Tensor) -> Tensor:
        """``z_r = E~(x_r)`` with the LoRA encoder; zeros for images without a reference
        (``has_ref`` False), which are not encoded at all (``x_r = 0`` of paper section 2.1)."""
        b, _, h, w = lq_latents.shape
        latents = lq_latents.new_zeros(b, 4, h, w)
        if ref is None:
            return latents
        if ref.shape[-2:] != (h * self.vae_downscale, w * self.vae_downscale):
            raise ValueError(f'reference {tuple(ref.shape[-2:])} does not match the LQ size '
                             f'{(h * self.vae_downscale, w * self.vae_downscale)}: give the '
                             'reference at the LQ size (HeadsUp.reference_condition does this)')
        if has_ref is None:
            return self.encode(ref).to(latents.dtype)
        keep = has_ref.to(device=lq_latents.device, dtype=torch.bool).reshape(-1)
        if bool(keep.all()):
            return self.encode(ref).to(latents.dtype)
        if bool(keep.any()):
            latents = latents.index_put((keep.nonzero()[:, 0], ), self.encode(ref[keep]).to(latents.dtype))
        return latents

    def unet_input(self, lq_latents: Tensor, ref: Optional[Tensor], face_mask: Optional[Tensor],
                   condition: Optional[Tensor], has_ref: Optional[Tensor] = None) -> Tensor:
        """Concatenate the UNet's extra input channels after the LQ latent.

        With 9 input channels (HeadsUp) they are the reference-face latent and the face mask
        resized to latent resolution; a missing reference (``ref`` None, or ``has_ref`` False for
        an image) gives zeros for both (HeadsUp's reference dropout, paper section 2.3 and
        appendix B). Other widths take an explicit ``condition``.
        """
        extra = self.in_channels - lq_latents.shape[1]
        if extra == 0:
            if ref is not None or face_mask is not None or condition is not None:
                raise ValueError('This backbone has a 4-channel conv_in: build it with '
                                 'in_channels=9 to condition on a reference face and mask.')
            return lq_latents
        if condition is not None:
            parts = [condition]
        elif extra == 5:
            b, _, h, w = lq_latents.shape
            ref_latents = self.reference_latents(ref, has_ref, lq_latents)
            mask = (F.interpolate(face_mask.float(), size=(h, w), mode='bilinear',
                                  align_corners=False) if face_mask is not None else
                    lq_latents.new_zeros(b, 1, h, w))
            if has_ref is not None:
                mask = mask * has_ref.to(device=mask.device, dtype=mask.dtype).reshape(-1, 1, 1, 1)
            parts = [ref_latents.to(lq_latents.dtype), mask.to(lq_latents.dtype)]
        else:
            raise ValueError(f'conv_in has {self.in_channels} channels: pass `condition` with '
                             f'{extra} channels at latent resolution')
        latents = torch.cat([lq_latents, *parts], dim=1)
        if latents.shape[1] != self.in_channels:
            raise ValueError(f'UNet input has {latents.shape[1]} channels, conv_in expects '
                             f'{self.in_channels}')
        return latents

    def forward(self,
                lq: Tensor,
                prompt_embeds: Tensor,
                ref: Optional[Tensor] = None,
                face_mask: Optional[Tensor] = None,
                condition: Optional[Tensor] = None,
                has_ref: Optional[Tensor] = None,
                return_latents: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Restore in one step.

        Args:
            lq: ``B x 3 x H x W`` in [0, 1], already at the output size; H, W multiples of 8.
            prompt_embeds: ``B x L x D`` text-encoder states (D = ``cross_attention_dim``).
            ref: optional reference face ``B x 3 x H x W`` in [0, 1] (9-channel backbones).
            face_mask: optional ``B x 1 x H x W`` in [0, 1] (9-channel backbones).
            condition: explicit extra UNet input channels at latent resolution.
            has_ref: optional ``(B,)`` bool: images whose reference (and mask) count; the others
                get zeros as if no reference were given.
            return_latents: also return ``z_H`` (the VSD loss needs it).

        Returns:
            ``sr`` ``B x 3 x H x W`` float32 in [0, 1], and ``z_H`` ``B x 4 x H/8 x W/8`` if asked.
        """
        if lq.shape[-1] % self.vae_downscale or lq.shape[-2] % self.vae_downscale:
            raise ValueError(f'LQ size {tuple(lq.shape[-2:])} must be a multiple of '
                             f'{self.vae_downscale} (the VAE downscale factor)')
        with frozen_dtype_autocast(self.frozen_dtype, lq.device):
            lq_latents = self.encode(lq)
            unet_in = self.unet_input(lq_latents, ref, face_mask, condition, has_ref)
            timesteps = torch.full((lq.shape[0], ), self.timestep, device=lq.device, dtype=torch.long)
            eps = self.predict_eps(unet_in, timesteps, prompt_embeds)
            hq_latents = self.one_step(lq_latents, eps)
            sr = self.decode(hq_latents)
        return (sr, hq_latents) if return_latents else sr

    # ------------------------------------------------------------------ LoRA merge
    def merge_lora(self) -> None:
        """Fold every LoRA delta into its base weight (faster inference, same outputs), in place and undoable
        (:meth:`unmerge_lora`); :meth:`inference_copy` is the fast path that leaves this backbone alone."""
        self._check_trainable()
        if not self._lora_merged:
            self.unet.fuse_lora()
            if self.vae_lora_targets:
                self.vae.fuse_lora()
            self._lora_merged = True

    def unmerge_lora(self) -> None:
        """Undo :meth:`merge_lora` (needed before training again)."""
        if self._lora_merged:
            self.unet.unfuse_lora()
            if self.vae_lora_targets:
                self.vae.unfuse_lora()
            self._lora_merged = False

    @contextlib.contextmanager
    def merged_lora(self):
        """Context manager running inference with merged LoRA weights."""
        was_merged = self._lora_merged
        self.merge_lora()
        try:
            yield self
        finally:
            if not was_merged:
                self.unmerge_lora()

    # ------------------------------------------------------------------ fast inference
    @contextlib.contextmanager
    def tiled(self, tiling: Optional[LatentTiling]):
        """Run the VAE and the UNet on overlapping tiles inside the block (None: untiled); see
        :mod:`.latent_tiling`. Restores the previous setting afterwards."""
        previous = self.tiling
        self.tiling = tiling
        try:
            yield self
        finally:
            self.tiling = previous

    @torch.no_grad()
    def inference_copy(self,
                       dtype: Union[str, torch.dtype] = 'bfloat16',
                       channels_last: Optional[bool] = None,
                       compile: bool = False,
                       device: Optional[Union[str, torch.device]] = None) -> 'OneStepSD':
        """A separate, frozen copy of this backbone for fast inference (docs/benchmarks.md, "What the fast path does").

        * LoRA merged into the base weights and the peft layers removed (one plain conv / linear per layer
          instead of base + A + B); merged in float32, then cast to ``dtype``;
        * every weight in ``dtype`` (bf16 by default: SD 2.1 is trained in it and needs no loss scaling);
        * PyTorch SDPA attention, channels-last activations (default: on CUDA only; on CPU the oneDNN
          convolutions are not faster channels-last for these shapes), optional ``torch.compile`` of the UNet
          and of the VAE encoder and decoder.

        This backbone is left untouched, so training can go on and :meth:`save_trainable` never sees merged
        weights; the copy refuses to save or load trainable tensors (``inference_only``). Build a new copy
        after the weights change. The copy is made on ``device`` (default: this backbone's), with float32
        weights only transiently, one network at a time.

        Returns:
            an ``OneStepSD`` in eval mode whose ``forward`` has the same contract (``sr`` float32 in [0, 1]).
        """
        dtype = parse_dtype(dtype)
        device = torch.device(device) if device is not None else self.sqrt_alpha_bar.device
        fast = copy.copy(self)  # shallow: share scheduler and settings, then replace the modules below
        fast._modules = dict(self._modules)
        fast._buffers = dict(self._buffers)
        fast._parameters = dict(self._parameters)
        for name in ('unet', 'vae'):
            net = copy.deepcopy(getattr(self, name)).float()  # merge in float32
            merge_and_unload_lora(net)
            net.requires_grad_(False).eval()
            use_sdpa_attention(net)
            # nn.Module.to, not ModelMixin.to: the latter warns about casting a from_pretrained model, which is
            # what we mean to do here (every weight in ``dtype``)
            setattr(fast, name, nn.Module.to(net, device=device, dtype=dtype))
        fast.to(device)
        fast.frozen_dtype = dtype
        fast._lora_merged = False
        fast.inference_only = True
        fast.tiling = None
        fast.channels_last = device.type == 'cuda' if channels_last is None else bool(channels_last)
        if fast.channels_last:
            fast.unet.to(memory_format=torch.channels_last)
            fast.vae.to(memory_format=torch.channels_last)
        if compile:
            # Compile the modules the forward calls, not ``forward`` itself: tiling and the one-step maths stay
            # plain Python (dynamic tile counts would otherwise recompile).
            fast.unet = torch.compile(fast.unet)
            fast.vae.encoder = torch.compile(fast.vae.encoder)
            fast.vae.decoder = torch.compile(fast.vae.decoder)
        return fast.eval()

    def train(self, mode: bool = True) -> 'OneStepSD':
        if mode and self.inference_only:
            raise RuntimeError('This is a merged inference copy (OneStepSD.inference_copy): train the original')
        return super().train(mode)

    def _check_trainable(self) -> None:
        if self.inference_only:
            raise RuntimeError('This is a merged inference copy (OneStepSD.inference_copy): it has no separate '
                               'LoRA tensors; save or load them on the original backbone')

    # ------------------------------------------------------------------ checkpoints
    def trainable_state_dict(self) -> Dict[str, Tensor]:
        """Only the trained tensors (LoRA + ``conv_in``), keyed as in ``state_dict()``."""
        return {name: param.detach() for name, param in self.named_parameters() if param.requires_grad}

    def save_trainable(self, path: str) -> None:
        """Write the trainable tensors as safetensors (a few MB instead of the whole SD model)."""
        from safetensors.torch import save_file

        self._check_trainable()
        if self._lora_merged:
            raise RuntimeError('LoRA is merged into the base weights: unmerge before saving')
        tensors = {k: v.contiguous().cpu() for k, v in self.trainable_state_dict().items()}
        metadata = dict(format='portraitisr.OneStepSD', lora_rank=str(self.lora_rank),
                        lora_alpha=str(self.lora_alpha), in_channels=str(self.in_channels))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_file(tensors, path, metadata=metadata)

    def load_trained_weights(self, spec: str) -> None:
        """Load an OSEDiff ``.pkl`` release or our ``.safetensors`` (path or resolver spec)."""

        path = str(resolve_file(spec))
        if path.endswith('.safetensors'):
            self.load_trainable(path)
        else:
            self.load_release_checkpoint(path)

    def load_release_checkpoint(self, checkpoint: Union[str, Dict]) -> None:
        """Load the method's official release file (path or loaded dict): OSEDiff's ``.pkl`` layout here; a method
        with another release layout (PiSA-SR's ``pisa_sr.pkl``) overrides it."""
        load_osediff_checkpoint(self, checkpoint)

    def load_trainable(self, state: Union[str, Dict[str, Tensor]], strict: bool = True) -> None:
        """Load tensors written by :meth:`save_trainable` (a path or a state dict)."""
        self._check_trainable()
        if isinstance(state, str):
            state = load_state_dict(state)
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if strict and (missing or unexpected):
            raise KeyError(f'Trainable-weight mismatch: {len(missing)} missing (e.g. {missing[:3]}), '
                           f'{len(unexpected)} unexpected (e.g. {unexpected[:3]})')
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name in expected:
                if name in state:
                    if params[name].shape != state[name].shape:
                        raise ValueError(f'{name}: checkpoint shape {tuple(state[name].shape)} != '
                                         f'model shape {tuple(params[name].shape)}')
                    params[name].copy_(state[name])


def build_sd_components(pretrained: Optional[str],
                        unet_cfg: Optional[dict] = None,
                        vae_cfg: Optional[dict] = None,
                        scheduler_cfg: Optional[dict] = None,
                        parts: Sequence[str] = ('unet', 'vae', 'scheduler')) -> dict:
    """Build the requested SD parts from an SD folder / hub id or from inline configs.

    Returns ``{'unet': UNet2DConditionModel, 'vae': AutoencoderKL, 'scheduler': DDPMScheduler}``
    restricted to ``parts``. ``scheduler_cfg`` overrides keys of a pretrained scheduler config.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    if pretrained is None:
        inline = dict(unet=unet_cfg, vae=vae_cfg)
        missing = [part for part in parts if part != 'scheduler' and inline[part] is None]
        if missing:
            raise ValueError(f'Without `pretrained`, inline configs are needed for: {missing}')
        builders = dict(unet=lambda: UNet2DConditionModel(**unet_cfg),
                        vae=lambda: AutoencoderKL(**vae_cfg),
                        scheduler=lambda: DDPMScheduler(**(scheduler_cfg or {})))
        return {part: builders[part]() for part in parts}

    required = [f for f in SD_REQUIRED_FILES if f.split('/')[0] in parts]
    folder = str(resolve_pretrained_dir(pretrained, required=required))
    builders = dict(
        unet=lambda: UNet2DConditionModel.from_pretrained(folder, subfolder='unet'),
        vae=lambda: AutoencoderKL.from_pretrained(folder, subfolder='vae'),
        scheduler=lambda: DDPMScheduler.from_pretrained(folder, subfolder='scheduler',
                                                        **(scheduler_cfg or {})))
    return {part: builders[part]() for part in parts}
