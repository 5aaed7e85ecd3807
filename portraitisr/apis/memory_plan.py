"""How much memory restoring one photo takes, and the tiling that keeps it under a budget.

``portraitisr restore`` and :class:`~portraitisr.apis.portrait_restorer.PortraitRestorer` pick the tiling of a
one-step model per image: the largest tile of :data:`TILE_LADDER` whose estimate fits the budget (``--max-memory``,
default :data:`BUDGET_FRACTION` of the memory free when the restore starts), never larger than the model's
preferred tile (larger tiles cost more time: self-attention grows with the square of a tile's pixels). An image
that fits in the preferred tile runs untiled. When even the smallest tile does not fit, the restore is refused
before any computing, with the estimate and the budget.

The estimate is a sum of what is alive at the peak of a streamed restore (:mod:`.streamed_restore`), in bytes, for
an ``h x w`` input restored to ``H x W = scale h x scale w`` (``P_in``, ``P_out`` pixels, ``P_lat = P_out / 64``
latent pixels after padding):

* ``base``: the process before the image (the model's weights, the runtime), measured (resident set size);
* input: the file's bytes plus the decoded image, :data:`INPUT_BYTES_PER_PIXEL` per input pixel (the float32
  record, the float32 tensor, the decoder's copy while reading);
* latents: :data:`LATENT_BYTES_PER_PIXEL` per latent pixel (moments, posterior, sample, UNet input, eps, the
  one-step result, and their tiled copies);
* tile activations: ``ACTIVATION_FACTOR`` times the largest activation a stage makes for one tile, the largest
  activation per tile pixel probed once per model by running each network on a small input
  (:func:`probe_activations`);
* output: the rows as they are stored (uint16 for files, 6 bytes per output pixel, float32 for arrays), and at the
  end the converted image and the encoder's buffers (:func:`output_bytes`).

``tools/benchmarks/restore_memory.py`` measures the peak resident memory of ``portraitisr restore`` in a
subprocess for a range of sizes and tiles and prints it next to this estimate; the constants below were fitted
there on the tiny debug model (``configs/debug/osediff_tiny.py``) and checked on the SD 2.1 architecture's networks
(see ``docs/command_line.md``, "Memory").
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

__all__ = ['TILE_LADDER', 'BUDGET_FRACTION', 'ActivationProfile', 'MemoryEstimate', 'TilePlan', 'parse_memory',
           'format_bytes', 'host_available_memory', 'device_available_memory', 'process_rss', 'probe_activations',
           'latent_tiling_for', 'estimate_restore_memory', 'plan_tiling', 'MemoryBudgetError']

#: Tile sides (output pixels) the automatic tiling tries, largest first (our choice: 128-pixel steps down from
#: OSEDiff's 1024-pixel VAE-encoder tile, reference section 1 "Tiling").
TILE_LADDER = (1024, 768, 512, 384, 256, 192, 128)
#: Share of the free memory the default budget takes: the rest is left to the system and other programs.
BUDGET_FRACTION = 0.8
#: Bytes per input pixel held while an image is restored: the float32 ``ImageRecord`` (12), the float32 tensor
#: (12), the 8-bit decode and its float copy while reading (peak 3 + 12 of them overlap with the first two), rounded
#: up to what ``tools/benchmarks/restore_memory.py`` measured.
INPUT_BYTES_PER_PIXEL = 40
#: Bytes per latent pixel at the peak of the latent stages (float32 moments 8 channels with their blend band,
#: posterior mean/std/var/noise, sample, UNet input (up to 9 channels), eps, one-step result): measured.
LATENT_BYTES_PER_PIXEL = 260
#: Peak memory of a network run on one tile as a multiple of its largest single activation (input, output and
#: the temporaries of a ResNet block alive together): measured on the tiny model and the SD 2.1 networks.
ACTIVATION_FACTOR = 4.0
#: Bytes the allocator and libraries add on top (fragmentation, thread pools), measured.
SLACK_BYTES = 256 * 2**20

_UNITS = {'': 1, 'b': 1, 'k': 2**10, 'kb': 10**3, 'kib': 2**10, 'm': 2**20, 'mb': 10**6, 'mib': 2**20,
          'g': 2**30, 'gb': 10**9, 'gib': 2**30, 't': 2**40, 'tb': 10**12, 'tib': 2**40}


class MemoryBudgetError(ValueError):
    """Restoring an image would need more memory than the budget, even with the smallest tile."""


def parse_memory(text: str) -> int:
    """``'6G'``, ``'6GB'``, ``'6.5GiB'``, ``'800M'``, ``'123456'`` -> bytes (K/M/G/T alone are binary units)."""
    match = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*', str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f'cannot read {text!r} as an amount of memory: write e.g. 6G, 6GB, 800M or bytes')
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ValueError(f'a memory budget must be positive, got {text!r}')
    return int(value)


def format_bytes(count: float) -> str:
    return f'{count / 2**30:.1f} GiB' if count >= 2**30 else f'{count / 2**20:.0f} MiB'


def host_available_memory() -> Optional[int]:
    """Bytes the system can give this process without swapping: psutil's ``available``, else Linux's
    ``MemAvailable``; None where neither tells."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def process_rss() -> Optional[int]:
    """This process's resident set size in bytes (psutil, else ``/proc/self/statm``); None where unknown."""
    try:
        import psutil
        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        return None


def device_available_memory(device) -> Optional[int]:
    """Free bytes on ``device``: ``torch.cuda.mem_get_info`` for CUDA, :func:`host_available_memory` for the CPU."""
    import torch

    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_memory()


@dataclass
class ActivationProfile:
    """The largest single activation of each network per tile pixel, in bytes (from :func:`probe_activations`):
    ``encode`` per input pixel of an encoder tile, ``unet`` per latent pixel of a UNet tile, ``decode`` per latent
    pixel of a decoder tile (whose output is 64 times larger); ``factor`` is the VAE's downscale."""

    encode: float
    unet: float
    decode: float
    factor: int = 8


def _largest_output(module, *inputs, **kwargs) -> int:
    """Bytes of the largest tensor any submodule of ``module`` returns when it is called on ``inputs``."""
    import torch

    largest = [0]

    def hook(_module, _inputs, output):
        tensors = output if isinstance(output, (tuple, list)) else (getattr(output, 'sample', output), )
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                largest[0] = max(largest[0], tensor.numel() * tensor.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with torch.no_grad():
            module(*inputs, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return largest[0]


def probe_activations(backbone, probe_latent: int = 16) -> ActivationProfile:
    """Run the VAE encoder, the UNet and the VAE decoder of a ``OneStepSD`` (its inference copy) once on a
    ``probe_latent``-pixel-square latent (``8x`` that in pixels) and record each one's largest activation per
    tile pixel. The activations of these convolutional networks grow with the tile's pixels, so this scales."""
    import torch

    vae, unet = backbone.vae, backbone.unet
    factor = backbone.vae_downscale
    parameter = next(vae.parameters())
    device, dtype = parameter.device, parameter.dtype
    side = probe_latent * factor
    image = torch.zeros(1, 3, side, side, device=device, dtype=dtype)
    latent = torch.zeros(1, vae.config.latent_channels, probe_latent, probe_latent, device=device, dtype=dtype)
    unet_in = torch.zeros(1, unet.config.in_channels, probe_latent, probe_latent, device=device, dtype=dtype)
    embeds = torch.zeros(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    timestep = torch.full((1, ), backbone.timestep, device=device, dtype=torch.long)
    encode = _largest_output(vae.encoder, image)
    unet_bytes = _largest_output(unet, unet_in, timestep, encoder_hidden_states=embeds)
    decode = _largest_output(vae.decoder, latent)
    return ActivationProfile(encode=encode / side**2, unet=unet_bytes / probe_latent**2,
                             decode=decode / probe_latent**2, factor=factor)


def latent_tiling_for(tile: int, factor: int = 8, group_norm: str = 'auto'):
    """The :class:`~portraitisr.models.backbones.latent_tiling.LatentTiling` of a tile of ``tile`` output pixels:
    OSEDiff's proportions (UNet overlap 1/3 of a tile, reference section 1 "Tiling": 96 / 32; encoder overlap 1/8:
    1024 / 128; decoder overlap 1/4 of ``tiled_forward``'s default); ``group_norm`` for both VAE stages."""
    from portraitisr.models.backbones.latent_tiling import LatentTiling  # torch: the CLI's checks import this module

    if tile <= 0:
        raise ValueError(f'tile must be a positive number of pixels, got {tile}')
    latent = max(tile // factor, 1)
    encode = max(tile // factor * factor, factor)
    return LatentTiling(unet_tile=latent, unet_overlap=latent // 3, encode_tile=encode,
                        encode_overlap=encode // 8 // factor * factor, decode_tile=latent, decode_overlap=latent // 4,
                        encode_group_norm=group_norm, decode_group_norm=group_norm)


def output_bytes(out_pixels: int, bit_depth: int = 8, gray: bool = False, alpha: bool = False,
                 compare: bool = False, in_memory: bool = False) -> Tuple[int, int]:
    """``(stored, final)``: bytes of the rows as stored while decoding (uint16, or float32 ``in_memory``) and the
    largest set alive while the result is converted and written (the stored rows and the converted image, then the
    image, the encoder's channel-order copy and its compressed bytes, plus the comparison picture)."""
    stored = out_pixels * 3 * (4 if in_memory else 2)
    channels = (1 if gray else 3) + (1 if alpha else 0)
    sample = 4 if in_memory else bit_depth // 8
    image = out_pixels * channels * sample
    converted = stored + (image if gray or sample != 2 else 0) + (out_pixels * 4 if alpha else 0)
    if in_memory:
        return stored, converted
    written = 2 * image + out_pixels * channels * (bit_depth // 8)  # image, BGR(A) copy, encoded (at most raw)
    if compare:
        written = max(written, image + 2 * out_pixels * 3 * 3)  # 8-bit side by side and its encoded bytes
    return stored, max(converted, written)


@dataclass
class MemoryEstimate:
    """Estimated bytes of restoring one image, by part (see the module docstring).

    On the CPU everything shares one memory: :attr:`total`. On a GPU the latents and tile activations live there
    (:attr:`device_total`, with ``device_base``) and the image buffers on the host (:attr:`host_total`).
    """

    base: int = 0
    input: int = 0
    latents: int = 0
    activations: int = 0
    stored: int = 0
    final: int = 0
    slack: int = SLACK_BYTES
    device_base: int = 0
    on_gpu: bool = False
    waiting_tiles: int = 0  # 'exact' GroupNorm statistics: every tile's activations wait on the host per stage

    @property
    def total(self) -> int:
        """Peak bytes in the memory the budget is about (the GPU's on a GPU, else the host's)."""
        return self.device_total if self.on_gpu else self.host_total

    @property
    def host_total(self) -> int:
        if self.on_gpu:  # the latents and activations are on the GPU, the waiting tiles on the host
            return self.base + self.input + max(self.stored + self.waiting_tiles, self.final) + self.slack
        # the peak is either at the end of decoding (latents, one tile's activations, all rows stored) or while
        # the result is converted and written (the latents and activations are gone by then)
        computing = self.latents + self.activations + self.waiting_tiles + self.stored
        return self.base + self.input + max(computing, self.final) + self.slack

    @property
    def device_total(self) -> int:
        return self.device_base + self.latents + self.activations

    def describe(self) -> str:
        parts = {'model and runtime': self.device_base if self.on_gpu else self.base, 'input': self.input,
                 'latents': self.latents, 'tile activations': self.activations,
                 'waiting tiles (exact GroupNorm)': self.waiting_tiles, 'output': max(self.stored, self.final)}
        return ', '.join(f'{name} {format_bytes(value)}' for name, value in parts.items() if value)


def estimate_restore_memory(in_size: Tuple[int, int], scale: int, tile: Optional[int],
                            profile: ActivationProfile, base: int = 0, file_bytes: int = 0, bit_depth: int = 8,
                            gray: bool = False, alpha: bool = False, compare: bool = False,
                            in_memory: bool = False, device_base: int = 0, on_gpu: bool = False,
                            exact_group_norm: bool = False) -> MemoryEstimate:
    """Peak bytes of a streamed restore of an ``in_size`` ``(h, w)`` image at ``scale`` with tiles of ``tile``
    output pixels (None: untiled); see the module docstring. ``base``: resident bytes before the image;
    ``device_base``: GPU bytes already allocated (``on_gpu``); ``exact_group_norm``: the VAE's tiles run in step
    (``LatentTiling`` ``'exact'``), so one stage's activations of all tiles wait on the host: twice (a stage's
    inputs and outputs) the largest activation over the tiled area."""
    h, w = in_size
    factor = profile.factor
    out_h, out_w = h * scale, w * scale
    pad_h, pad_w = out_h + (-out_h) % factor, out_w + (-out_w) % factor
    lat = (pad_h // factor, pad_w // factor)
    if tile is None:
        enc_tile, unet_tile, dec_tile = (pad_h, pad_w), lat, lat
    else:
        tiling = latent_tiling_for(tile, factor)
        enc_tile = (min(tiling.encode_tile, pad_h), min(tiling.encode_tile, pad_w))
        unet_tile = (min(tiling.unet_tile, lat[0]), min(tiling.unet_tile, lat[1]))
        dec_tile = (min(tiling.decode_tile, lat[0]), min(tiling.decode_tile, lat[1]))
    activations = ACTIVATION_FACTOR * max(profile.encode * enc_tile[0] * enc_tile[1],
                                          profile.unet * unet_tile[0] * unet_tile[1],
                                          profile.decode * dec_tile[0] * dec_tile[1])
    # the decoder's output rows of one tile row wait in a float32 band (3 channels) before they are stored
    band = 4 * 3 * dec_tile[0] * factor * pad_w
    stored, final = output_bytes(out_h * out_w, bit_depth, gray, alpha, compare, in_memory)
    waiting = 0
    if exact_group_norm and tile is not None:
        tiling = latent_tiling_for(tile, factor)
        cover = lambda size, overlap: (size / max(size - overlap, 1))**2  # noqa: E731  (overlap counted twice)
        waiting = 2 * max(profile.encode * pad_h * pad_w * cover(tiling.encode_tile, tiling.encode_overlap),
                          profile.decode * lat[0] * lat[1] * cover(tiling.decode_tile, tiling.decode_overlap))
    return MemoryEstimate(base=int(base), input=int(file_bytes + INPUT_BYTES_PER_PIXEL * h * w),
                          latents=int(LATENT_BYTES_PER_PIXEL * lat[0] * lat[1]), activations=int(activations + band),
                          stored=int(stored), final=int(final), device_base=int(device_base), on_gpu=on_gpu,
                          waiting_tiles=int(waiting))


@dataclass
class TilePlan:
    """The tiling chosen for one image: ``tile`` output pixels (None: untiled), its estimate, the budget and the
    scale it was planned for."""

    tile: Optional[int]
    estimate: MemoryEstimate
    budget: Optional[int]
    scale: int = 1
    group_norm: str = 'tile'  # where the tiled VAE's GroupNorms take their statistics (LatentTiling)


def plan_tiling(in_size: Tuple[int, int], scale: int, profile: ActivationProfile, budget: Optional[int],
                preferred_tile: int = 512, untiled_up_to: Optional[int] = None, ladder: Sequence[int] = TILE_LADDER,
                host_budget: Optional[int] = None, **kwargs) -> TilePlan:
    """The largest tile of ``ladder`` (at most ``preferred_tile``) whose estimate fits ``budget`` bytes; untiled
    when the output's longer side is at most ``untiled_up_to`` (default ``preferred_tile``) and that fits. On a
    GPU (``on_gpu=True``) ``budget`` is the GPU's and ``host_budget`` (if given) bounds the host's part.
    ``kwargs`` go to :func:`estimate_restore_memory`.

    Raises:
        MemoryBudgetError: not even the smallest tile fits (the message gives the estimate and the budget).
    """
    out_h, out_w = in_size[0] * scale, in_size[1] * scale
    untiled_up_to = preferred_tile if untiled_up_to is None else untiled_up_to
    candidates = [None] if max(out_h, out_w) <= untiled_up_to else []
    candidates += [tile for tile in ladder if tile <= preferred_tile and tile < max(out_h, out_w)]
    if not candidates:
        candidates = [None]
    estimate = None
    # on a GPU the VAE's tiles run in step for whole-image GroupNorm statistics ('exact', LatentTiling's 'auto'),
    # while their waiting activations fit in host memory; else each tile normalises with its own ('tile')
    modes = ('exact', 'tile') if kwargs.get('on_gpu') else ('tile', )
    for tile in candidates:
        for mode in modes if tile is not None else ('tile', ):
            estimate = estimate_restore_memory(in_size, scale, tile, profile, exact_group_norm=mode == 'exact',
                                               **kwargs)
            host_fits = host_budget is None or not estimate.on_gpu or estimate.host_total <= host_budget
            if (budget is None or estimate.total <= budget) and host_fits:
                return TilePlan(tile=tile, estimate=estimate, budget=budget, scale=scale, group_norm=mode)
    smallest = 'untiled' if candidates[-1] is None else f'with {candidates[-1]}-pixel tiles'
    if budget is not None and estimate.total <= budget:
        raise MemoryBudgetError(
            f'restoring {in_size[1]}x{in_size[0]} at x{scale} needs about {format_bytes(estimate.host_total)} of '
            f'host memory for the image buffers ({estimate.describe()}), more than the {format_bytes(host_budget)} '
            'free: free memory or use a smaller --scale')
    raise MemoryBudgetError(
        f'restoring {in_size[1]}x{in_size[0]} at x{scale} ({out_w}x{out_h}) needs about '
        f'{format_bytes(estimate.total)} {smallest} ({estimate.describe()}), more than the budget of '
        f'{format_bytes(budget)}: raise --max-memory, free memory, or use a smaller --scale')
