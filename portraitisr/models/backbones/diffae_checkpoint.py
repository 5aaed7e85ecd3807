"""Read DiffAE's published checkpoints (PyTorch Lightning ``last.ckpt``) into :class:`~.diffae_unet.DiffAEUNet`.

Layout (phizaz/diffae ``experiment.py``, Lightning's ``ModelCheckpoint(save_last=True)``): a Lightning 1.4.5
checkpoint whose ``state_dict`` holds the trained network under ``model.`` and its EMA copy under ``ema_model.`` (the
one to use), the sampling buffer ``x_T``, and for latent-DPM models ``conds_mean``/``conds_std`` and
``*.latent_net.*``. Lightning keys ``callbacks`` by the callback *class*, and may pickle ``AttributeDict``
hyper-parameters, so ``torch.load(weights_only=True)`` refuses the file. :func:`load_lightning_checkpoint` loads it
with ``weights_only=True`` and without running any of that code:
every ``pytorch_lightning.*`` / ``lightning.*`` global the pickle names is allow-listed under that exact name with an
inert stand-in (an empty class; ``OrderedDict`` for ``AttributeDict``); anything else that is not a tensor or a
container is still refused.

:func:`convert_diffae_state_dict` maps DiffAE's names onto a (possibly IDFSR-shaped) :class:`DiffAEUNet` and says
exactly which tensors are new:

* ``input_blocks.0.0.weight`` is widened from 3 to ``in_channels`` input channels; the new channels start at zero
  (our choice: IDFSR, appendix E.2, only says the UNet is initialised from DiffAE; zeros make the widened network
  compute exactly DiffAE's function at the start);
* a self-attention block that became an :class:`~portraitisr.models.conditioning.IdentityCrossAttention` keeps its
  ``norm`` and ``proj_out``; its query takes the ``q`` rows of DiffAE's ``qkv``, and when the identity embedding is
  as wide as the block (512 at DiffAE-256's 16 x 16 and 8 x 8 levels) its key and value take the ``k`` and ``v`` rows
  too, so the swap adds no parameter (appendix E.2: "our method does not introduce any additional parameters").
  Otherwise the key/value projection keeps its fresh initialisation and is reported as new.

Every checkpoint tensor must be used and every model tensor set, then ``load_state_dict(strict=True)`` runs.
"""
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
from torch import Tensor, nn

from portraitisr.models.conditioning.identity_cross_attention import IdentityCrossAttention
from portraitisr.weights import load_state_dict, resolve_file
from .diffae_unet import DiffAEUNet

__all__ = ['load_lightning_checkpoint', 'diffae_state_dict', 'convert_diffae_state_dict', 'load_diffae_checkpoint',
           'qkv_to_cross_attention', 'unet_kwargs_from_beatgans_config', 'build_from_beatgans_config',
           'describe_parameters', 'DiffAELoadReport', 'LIGHTNING_MODULES']

#: modules whose pickled globals are replaced by inert stand-ins (Lightning's callback classes, AttributeDict)
LIGHTNING_MODULES = ('pytorch_lightning', 'lightning')
#: ``state_dict`` entries of a DiffAE LitModel that are not network weights
_NON_NETWORK_KEYS = ('x_T', 'conds_mean', 'conds_std')


def _stand_in(full_name: str) -> type:
    """What replaces the Lightning global ``full_name`` while unpickling. Lightning's ``AttributeDict`` (a ``dict``
    subclass holding the hyper-parameters) becomes a plain ``OrderedDict`` (the safe unpickler fills only real dicts);
    anything else - the callback classes that key ``checkpoint['callbacks']`` - becomes an empty class of the same
    name. Neither runs any code of the original."""
    module, _, name = full_name.rpartition('.')
    if name == 'AttributeDict':
        return OrderedDict
    return type(name, (), {'__module__': module, '__doc__': f'inert stand-in for {full_name}'})


def load_lightning_checkpoint(path) -> dict:
    """Load a PyTorch Lightning checkpoint without unpickling Lightning (or any other) code.

    Raises:
        CheckpointLoadError: the file names a global outside :data:`LIGHTNING_MODULES` that ``weights_only`` does
            not allow (it is never loaded with ``weights_only=False``).
    """

    path = str(path)
    stand_ins = []
    if not path.endswith('.safetensors'):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (ValueError, RuntimeError):  # not a zip archive (legacy format, junk): load_state_dict reports it
            unsafe = []
        stand_ins = [(_stand_in(name), name) for name in unsafe if name.split('.', 1)[0] in LIGHTNING_MODULES]
    return load_state_dict(path, safe_globals=stand_ins)


def diffae_state_dict(checkpoint: Mapping, use_ema: bool = True) -> Dict[str, Tensor]:
    """The network tensors of a DiffAE checkpoint, without prefix.

    Accepts a Lightning checkpoint (``{'state_dict': {'model.*', 'ema_model.*', 'x_T', ...}}``), its bare
    ``state_dict``, or an already extracted network state dict (no ``model.``/``ema_model.`` prefix). The latent DPM
    (``latent_net.*``) is not part of the autoencoder and is dropped.
    """
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise TypeError(f'expected a DiffAE checkpoint dict, got {type(checkpoint).__name__}')
    prefix = 'ema_model.' if use_ema else 'model.'
    has_prefix = any(k.startswith(('model.', 'ema_model.')) for k in state)
    if has_prefix and not any(k.startswith(prefix) for k in state):
        raise KeyError(f'the checkpoint has no {prefix!r} tensors (use_ema={use_ema}); prefixes found: '
                       f'{sorted({k.split(".", 1)[0] for k in state})}')
    out = {}
    for key, value in state.items():
        if not isinstance(value, Tensor) or key in _NON_NETWORK_KEYS:
            continue
        if has_prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix):]
        if key.startswith('latent_net.'):
            continue
        out[key] = value
    if not out:
        raise KeyError('no DiffAE network tensors in the checkpoint')
    return out


def _legacy_qkv_rows(qkv: Tensor, heads: int) -> tuple:
    """Split DiffAE's legacy-ordered ``qkv`` (``3C x ...``; per head ``[q_h, k_h, v_h]``) into q, k, v (``C x ...``,
    heads contiguous, the order :class:`IdentityCrossAttention` reshapes to)."""
    three_c = qkv.shape[0]
    ch = three_c // (3 * heads)
    grouped = qkv.reshape(heads, 3, ch, *qkv.shape[1:])
    return tuple(grouped[:, i].reshape(heads * ch, *qkv.shape[1:]) for i in range(3))


def qkv_to_cross_attention(prefix: str, state: Mapping[str, Tensor], block: IdentityCrossAttention) -> tuple:
    """DiffAE ``AttentionBlock`` tensors under ``prefix`` -> ``({our key: tensor}, [keys left at their init])``."""
    heads = block.num_heads
    q_w, k_w, v_w = _legacy_qkv_rows(state[prefix + 'qkv.weight'], heads)
    q_b, k_b, v_b = _legacy_qkv_rows(state[prefix + 'qkv.bias'], heads)
    out = {prefix + 'q.weight': q_w, prefix + 'q.bias': q_b}
    for name in ('norm.weight', 'norm.bias', 'proj_out.weight', 'proj_out.bias'):
        out[prefix + name] = state[prefix + name]
    if block.id_channels == block.channels:
        # Conv1d(C, C, 1) weights -> Linear(D = C, C): keys then values
        out[prefix + 'kv.weight'] = torch.cat([k_w[..., 0], v_w[..., 0]], 0)
        out[prefix + 'kv.bias'] = torch.cat([k_b, v_b], 0)
        return out, []
    return out, [prefix + 'kv.weight', prefix + 'kv.bias']


@dataclass
class DiffAELoadReport:
    """What :func:`convert_diffae_state_dict` did: tensors taken as they are, adapted, and left at their init."""

    copied: List[str] = field(default_factory=list)
    widened: List[str] = field(default_factory=list)
    attention_converted: List[str] = field(default_factory=list)
    initialised: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f'{len(self.copied)} tensors copied, {len(self.widened)} widened (new input channels zero), '
                f'{len(self.attention_converted)} attention blocks turned into identity cross-attention, '
                f'{len(self.initialised)} left at their initialisation, {len(self.dropped)} dropped')


def convert_diffae_state_dict(state: Mapping[str, Tensor], model: DiffAEUNet) -> tuple:
    """DiffAE network tensors -> a complete state dict for ``model`` and a :class:`DiffAELoadReport`.

    Raises:
        KeyError / ValueError: a checkpoint tensor without a place in ``model``, a model tensor the checkpoint does
            not provide (other than the documented new ones), or a shape that is neither equal nor widenable.
    """
    own = model.state_dict()
    report = DiffAELoadReport()
    out: Dict[str, Tensor] = {}
    used = set()
    cross = {name + '.': module for name, module in model.named_modules() if isinstance(module, IdentityCrossAttention)}
    for prefix, block in cross.items():
        needed = [prefix + n for n in ('norm.weight', 'norm.bias', 'qkv.weight', 'qkv.bias', 'proj_out.weight',
                                       'proj_out.bias')]
        missing = [k for k in needed if k not in state]
        if missing:
            raise KeyError(f'{prefix[:-1]}: the checkpoint has no self-attention block there (missing {missing})')
        converted, fresh = qkv_to_cross_attention(prefix, state, block)
        out.update(converted)
        used.update(needed)
        report.attention_converted.append(prefix[:-1])
        for key in fresh:
            out[key] = own[key]
            report.initialised.append(key)
    dropped_parts = () if model.use_style else ('encoder.', 'cond_emb_layers.')
    for key, value in state.items():
        if key in used:
            continue
        if any(part in key for part in dropped_parts):
            report.dropped.append(key)  # the model was built without the style path (use_style=False)
            continue
        if key not in own:
            raise KeyError(f'DiffAE tensor {key!r} {tuple(value.shape)} has no counterpart in {type(model).__name__}')
        target = own[key]
        if value.shape == target.shape:
            out[key] = value
            report.copied.append(key)
        elif key == 'input_blocks.0.0.weight' and value.shape[0] == target.shape[0] and \
                value.shape[2:] == target.shape[2:] and value.shape[1] < target.shape[1]:
            widened = value.new_zeros(target.shape)
            widened[:, :value.shape[1]] = value
            out[key] = widened
            report.widened.append(key)
        else:
            raise ValueError(f'{key}: DiffAE has {tuple(value.shape)}, {type(model).__name__} {tuple(target.shape)}')
    missing = sorted(set(own) - set(out))
    if missing:
        raise KeyError(f'{len(missing)} tensors of {type(model).__name__} are not in the DiffAE checkpoint, e.g. '
                       f'{missing[:5]}: is it a checkpoint of the same configuration?')
    return out, report


def load_diffae_checkpoint(model: DiffAEUNet, weights: Any, use_ema: bool = True) -> DiffAELoadReport:
    """Resolve ``weights`` (a path, a file name in ``$PORTRAITISR_HOME`` and the caches, a URL or a weight-spec dict),
    read it safely, convert it for ``model`` and load it with ``strict=True``.

    ``weights`` may also be an already loaded checkpoint dict. ``use_ema`` picks ``ema_model.*`` (what DiffAE uses
    for inference) over ``model.*``.
    """
    if isinstance(weights, Mapping) and ('state_dict' in weights or any(isinstance(v, Tensor)
                                                                        for v in weights.values())):
        checkpoint = weights
    else:

        checkpoint = load_lightning_checkpoint(resolve_file(weights))
    state, report = convert_diffae_state_dict(diffae_state_dict(checkpoint, use_ema), model)
    model.load_state_dict({k: v.to(dtype=model.state_dict()[k].dtype) for k, v in state.items()}, strict=True)
    return report


def unet_kwargs_from_beatgans_config(conf: Mapping[str, Any]) -> dict:
    """``BeatGANsAutoencConfig`` fields (as a dict) -> :class:`DiffAEUNet` keyword arguments.

    Refuses settings this port does not implement (class conditioning, one combined condition, other encoder pools,
    the new attention order, 1-D/3-D convolutions).
    """
    unsupported = {'resnet_two_cond': (True, ), 'enc_pool': ('adaptivenonzero', ), 'num_classes': (None, ),
                   'use_new_attention_order': (False, ), 'dims': (2, ), 'num_heads_upsample': (-1, None),
                   'time_embed_channels': (None, conf.get('model_channels'))}
    for key, allowed in unsupported.items():
        if key in conf and conf[key] not in allowed:
            raise ValueError(f'DiffAE config {key}={conf[key]!r} is not supported (expected one of {allowed})')
    # DiffAE's ResBlocks take the style code through Linear(resnet_cond_channels or embed_channels, out): the
    # encoder's output width must be that (512 = 512 in every published config)
    style_in = conf.get('resnet_cond_channels') or conf.get('embed_channels', 512)
    if conf.get('enc_out_channels', 512) != style_in:
        raise ValueError(f"enc_out_channels={conf.get('enc_out_channels', 512)} but the ResBlocks take a style code of "
                         f'width {style_in} (resnet_cond_channels or embed_channels): DiffAE cannot run this config')
    names = {'image_size': 'image_size', 'in_channels': 'in_channels', 'out_channels': 'out_channels',
             'model_channels': 'model_channels', 'channel_mult': 'channel_mult', 'num_res_blocks': 'num_res_blocks',
             'num_input_res_blocks': 'num_input_res_blocks', 'input_channel_mult': 'input_channel_mult',
             'attention_resolutions': 'attention_resolutions', 'embed_channels': 'embed_channels',
             'dropout': 'dropout', 'num_heads': 'num_heads', 'num_head_channels': 'num_head_channels',
             'resblock_updown': 'resblock_updown', 'resnet_use_zero_module': 'resnet_use_zero_module',
             'conv_resample': 'conv_resample', 'enc_channel_mult': 'enc_channel_mult',
             'enc_num_res_block': 'enc_num_res_blocks', 'enc_attn_resolutions': 'enc_attn_resolutions',
             'enc_out_channels': 'enc_out_channels'}
    kwargs = {ours: (tuple(conf[theirs]) if isinstance(conf[theirs], list) else conf[theirs])
              for theirs, ours in names.items() if theirs in conf}
    # DiffAE gives its encoder the UNet's in_channels (phizaz/diffae model/unet_autoenc.py, BeatGANsEncoderConfig)
    kwargs['enc_in_channels'] = conf.get('in_channels', 3)
    return kwargs


def build_from_beatgans_config(conf: Mapping[str, Any], **overrides: Any) -> DiffAEUNet:
    """A :class:`DiffAEUNet` built from ``BeatGANsAutoencConfig`` fields (``overrides`` win)."""
    return DiffAEUNet(**{**unet_kwargs_from_beatgans_config(conf), **overrides})


def describe_parameters(model: nn.Module) -> Dict[str, List[int]]:
    """``{name: shape}`` of every tensor of ``model``'s state dict (works on the meta device)."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


