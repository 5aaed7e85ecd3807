"""A thin mmengine strategy over PyTorch's FSDP2 (``fully_shard``): sharded training on GPUs, and on CPUs (gloo).

Why not mmengine's own ``FSDPStrategy``: it wraps the whole model in FSDP1, which cannot run without an accelerator
("FSDP needs a non-CPU accelerator device"), ``mmengine.dist.init_dist`` calls ``torch.cuda.set_device``
unconditionally, and its wrapper calls ``forward(mode='loss')`` instead of a model's own ``train_step``, which our
multi-optimiser models (AuthFace's ControlNet + discriminators) need (mmengine 0.10 ``FSDPStrategy`` and
``MMFullyShardedDataParallel.train_step``). FSDP2 shards parameters in place: the model keeps its class and
methods, its ``train_step`` runs as under a single process, and the sharded submodules gather their parameters around
each ``forward``.

What it does:

* **Sharding** (``shard_modules``): each named submodule (``'backbone.unet'``, ``'backbone.controlnet'``, ...) and,
  inside it, every module whose class is in ``block_classes`` (the UNet's transformer and ResNet blocks, for
  memory granularity) becomes an FSDP2 unit on a 1-D device mesh of all ranks. Those modules must be called through
  their ``forward``. Every trainable parameter must be inside a sharded module (an unsharded one would need its own
  gradient all-reduce; the strategy refuses it with the parameter's name); frozen parts outside (VAE, text
  encoders) are replicated. ``mixed_precision`` (``param_dtype`` / ``reduce_dtype``) gives FSDP2's bf16 compute
  with float32 master weights and gradient reduction.
* **Processes**: ``torchrun`` (``--launcher pytorch``, one or many nodes); NCCL on GPUs, gloo on CPUs (without
  ``torch.cuda.set_device``). ``launcher='none'`` trains one process without sharding (same maths, same
  checkpoint format).
* **Checkpoints** in the usual single-file layout, so every hook of ours works unchanged (trainable-only state,
  weights-only loading, random state, atomic writes, auto-resume): the sharded trainable parameters are gathered
  into full tensors (rank 0 keeps them, on the CPU) and the optimisers' states are gathered with
  ``torch.distributed.checkpoint.state_dict`` in its full, parameter-name-keyed form. Frozen sharded parameters are
  not gathered: they are the pretrained weights the model is built from. Rank 0 writes the file atomically
  (``<name>.tmp``, fsync, rename). Loading reads the file on every rank (memory-mapped) and each rank copies its own
  shard. Every rank's torch random state is saved (``rank_random_states``) and each rank gets its own back, so a
  resumed sharded run continues exactly.

Gradient accumulation (``accumulative_counts``) is correct but reduce-scatters at every micro-step (FSDP2 has no
``no_sync``). AMP optimiser wrappers (loss scaling) are refused: use ``mixed_precision=dict(param_dtype=
'bfloat16')``.
"""
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

import mmengine
import torch
import torch.distributed as dist
from mmengine._strategy import SingleDeviceStrategy
from mmengine.dist import broadcast, get_dist_info, is_distributed
from mmengine.optim import BaseOptimWrapper, OptimWrapperDict
from mmengine.utils import get_git_hash
from torch import nn

from portraitisr.registry import STRATEGIES
from portraitisr.utils.atomic_files import publish_file
from portraitisr.weights import load_state_dict

__all__ = ['FSDP2Strategy', 'gather_rank_random_states', 'select_rank_random_state']

#: A checkpoint being written (the same suffix as PortraitRunner's and AtomicCheckpointHook's).
TEMPORARY_SUFFIX = '.tmp'
_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def _is_dtensor(value) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(value, DTensor)


def _rank_random_state(model: nn.Module) -> dict:
    state = dict(torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    for name, module in model.named_modules():
        if callable(getattr(module, 'get_rng_state', None)) and callable(getattr(module, 'set_rng_state', None)):
            state[f'module:{name}'] = module.get_rng_state()
    return state


def gather_rank_random_states(model: nn.Module) -> List[dict]:
    """Every rank's torch (and CUDA, and generator-owning modules') random state, on every rank (collective)."""
    state = _rank_random_state(model)
    if not is_distributed():
        return [state]
    gathered: List[Optional[dict]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered


def select_rank_random_state(checkpoint: dict, rank: int) -> None:
    """Put this rank's saved random state into ``checkpoint['random_state']`` (what ``RandomStateHook`` restores),
    in place; a checkpoint from a run with fewer ranks keeps rank 0's state for the others."""
    states = checkpoint.get('rank_random_states')
    if not states or 'random_state' not in checkpoint:
        return
    own = states[rank] if rank < len(states) else None
    if own is not None:
        checkpoint['random_state'] = dict(checkpoint['random_state'], **own)


@STRATEGIES.register_module()
class FSDP2Strategy(SingleDeviceStrategy):
    """mmengine strategy sharding chosen submodules with FSDP2; see the module docstring.

    Args:
        shard_modules: dotted paths of the submodules to shard (each called through ``forward``).
        block_classes: class names of the blocks inside them that become FSDP2 units of their own.
        mixed_precision: ``dict(param_dtype='bfloat16', reduce_dtype='float32')`` or None (float32).
        reshard_after_forward: free the gathered parameters after each forward (ZeRO-3; False keeps them until
            the backward, ZeRO-2-like, trading memory for one all-gather less).
        **kwargs: :class:`mmengine._strategy.BaseStrategy`'s (``work_dir``, ``env_kwargs``, ...; the runner fills
            them in).
    """

    def __init__(self, *, shard_modules: Sequence[str] = (), block_classes: Sequence[str] = (),
                 mixed_precision: Optional[dict] = None, reshard_after_forward: bool = True, **kwargs) -> None:
        self.shard_modules = [str(m) for m in shard_modules]
        self.block_classes = set(block_classes)
        self.mixed_precision = dict(mixed_precision) if mixed_precision else None
        for key, value in (self.mixed_precision or {}).items():
            if key not in ('param_dtype', 'reduce_dtype', 'output_dtype') or value not in _DTYPES:
                raise ValueError(f'mixed_precision takes param_dtype / reduce_dtype / output_dtype in '
                                 f'{sorted(_DTYPES)}, got {key}={value!r}')
        self.reshard_after_forward = reshard_after_forward
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ processes
    def _setup_distributed(self, launcher: str = 'pytorch', backend: str = 'nccl', **kwargs) -> None:
        """Start the process group: NCCL on GPUs, gloo on CPUs (no ``torch.cuda.set_device`` there)."""
        if is_distributed():
            return
        if launcher != 'pytorch':
            from mmengine.dist import init_dist
            init_dist(launcher, backend, **kwargs)
            return
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
        elif backend != 'gloo':
            backend = 'gloo'
        dist.init_process_group(backend=backend, **kwargs)

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device('cuda', torch.cuda.current_device())
        return torch.device('cpu')

    @property
    def sharded(self) -> bool:
        return is_distributed() and get_dist_info()[1] > 1

    # ------------------------------------------------------------------ model
    def _init_model_weights(self, model: nn.Module) -> nn.Module:
        """``init_weights`` without mmengine's per-parameter log, then the same weights on every rank."""
        if hasattr(model, 'init_weights') and self.dispatch_kwargs.get('init_weights_for_test_or_val', True):
            had_dump = hasattr(model, '_dump_init_info')
            if had_dump:
                model._dump_init_info = lambda: None
            try:
                model.init_weights()
            finally:
                if had_dump:
                    del model._dump_init_info
            if is_distributed():
                for value in model.state_dict().values():
                    broadcast(value)
        return model

    def _wrap_model(self, model: nn.Module) -> nn.Module:
        device = self.device()
        if not self.sharded:
            return model.to(device)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (get_dist_info()[1], ))
        options = dict(mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        if self.mixed_precision:
            options['mp_policy'] = MixedPrecisionPolicy(
                **{key: _DTYPES[value] for key, value in self.mixed_precision.items()})
        roots = []
        for path in self.shard_modules:
            try:
                roots.append((path, model.get_submodule(path)))
            except AttributeError:
                raise KeyError(f'shard_modules: {type(model).__name__} has no submodule {path!r}; its children: '
                               f'{[name for name, _ in model.named_children()]}') from None
        for _, root in roots:
            # children before parents: FSDP2 units must not contain an already-sharded parent
            for block in reversed(list(root.modules())):
                if block is not root and type(block).__name__ in self.block_classes:
                    fully_shard(block, **options)
            fully_shard(root, **options)
        unsharded = [name for name, p in model.named_parameters() if p.requires_grad and not _is_dtensor(p)]
        if unsharded:
            raise ValueError(f'{len(unsharded)} trainable parameters are outside the sharded modules '
                             f'{self.shard_modules}, e.g. {unsharded[:3]}: add their module to shard_modules')
        self._move_unsharded(model, device)
        self.logger.info(f'FSDP2: sharded {[path for path, _ in roots]} over {get_dist_info()[1]} ranks '
                         f'({device.type}); blocks: {sorted(self.block_classes) or "none"}')
        return model

    @staticmethod
    def _move_unsharded(model: nn.Module, device: torch.device) -> None:
        """Move the replicated (unsharded) parameters and buffers to ``device``; FSDP2 placed the sharded ones."""
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None and not _is_dtensor(param) and param.device != device:
                    param.data = param.data.to(device)
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.device != device:
                    module._buffers[name] = buffer.to(device)

    def build_optim_wrapper(self, optim_wrapper, model=None):
        message = ('FSDP2Strategy: AMP optimiser wrappers (loss scaling) are not supported; use the strategy\'s '
                   "mixed_precision=dict(param_dtype='bfloat16') instead")
        if isinstance(optim_wrapper, dict):
            configs = [optim_wrapper] + [v for v in optim_wrapper.values() if isinstance(v, dict)]
            if any('Amp' in str(c.get('type', '')) for c in configs):
                raise ValueError(message)
        wrapper = super().build_optim_wrapper(optim_wrapper, model)
        wrappers = wrapper.values() if isinstance(wrapper, OptimWrapperDict) else [wrapper]
        if any(hasattr(item, 'loss_scaler') for item in wrappers):
            raise ValueError(message)
        return wrapper

    # ------------------------------------------------------------------ state
    def _optim_wrappers(self) -> Dict[Optional[str], BaseOptimWrapper]:
        if isinstance(self.optim_wrapper, OptimWrapperDict):
            return dict(self.optim_wrapper.items())
        return {None: self.optim_wrapper}

    def model_state_dict(self) -> dict:
        """The full state on rank 0 (CPU tensors; sharded trainable parameters gathered, frozen sharded ones left
        out), ``{}`` on the other ranks. Collective: every rank must call it."""
        rank = get_dist_info()[0]
        frozen = {name for name, p in self.model.named_parameters() if not p.requires_grad}
        state = {}
        for name, value in self.model.state_dict().items():
            if _is_dtensor(value):
                if name in frozen:
                    continue
                value = value.full_tensor()
            if rank == 0:
                state[name] = value.detach().to('cpu', copy=True)
        return state

    def optim_state_dict(self) -> dict:
        """Each optimiser's full state keyed by parameter names (``torch.distributed.checkpoint.state_dict``), on
        rank 0; per ``OptimWrapperDict`` key. Collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        states = {key: get_optimizer_state_dict(self.model, wrapper.optimizer, options=options)
                  for key, wrapper in self._optim_wrappers().items()}
        return states[None] if None in states else states

    def load_model_state_dict(self, state_dict: dict, *, strict: bool = False,
                              revise_keys: list = [(r'^module\.', '')]) -> None:
        """Copy full tensors into the model; each rank keeps its shard of the sharded parameters."""
        import re

        from torch.distributed.tensor import distribute_tensor

        for pattern, replacement in revise_keys:
            state_dict = {re.sub(pattern, replacement, key): value for key, value in state_dict.items()}
        targets = dict(self.model.named_parameters())
        targets.update(self.model.named_buffers())
        unexpected = [key for key in state_dict if key not in targets]
        missing = [key for key in targets if key not in state_dict]
        if strict and (unexpected or missing):
            raise KeyError(f'state dict mismatch: {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} '
                           f'unexpected (e.g. {unexpected[:3]})')
        with torch.no_grad():
            for key, value in state_dict.items():
                target = targets.get(key)
                if target is None:
                    continue
                if tuple(value.shape) != tuple(target.shape):
                    raise ValueError(f'{key}: checkpoint shape {tuple(value.shape)} != model shape '
                                     f'{tuple(target.shape)}')
                if _is_dtensor(target):
                    local = value.to(device=target.device, dtype=target.dtype)
                    shard = distribute_tensor(local, target.device_mesh, target.placements, src_data_rank=None)
                    target.to_local().copy_(shard.to_local())
                else:
                    target.copy_(value.to(device=target.device, dtype=target.dtype))
        if unexpected:
            self.logger.warning(f'{len(unexpected)} checkpoint entries the model does not have, e.g. {unexpected[:3]}')

    def load_optim_state_dict(self, state_dict: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        wrappers = self._optim_wrappers()
        states = {None: state_dict} if None in wrappers else state_dict
        for key, wrapper in wrappers.items():
            if key not in states:
                raise KeyError(f'the checkpoint has no optimiser state for {key!r} (it has {sorted(states)})')
            set_optimizer_state_dict(self.model, wrapper.optimizer, states[key],
                                     options=StateDictOptions(full_state_dict=True))

    # ------------------------------------------------------------------ files
    def load_checkpoint(self, filename: str, *, map_location: Union[str, Callable] = 'cpu', strict: bool = False,
                        revise_keys: list = [(r'^module\.', '')], callback: Optional[Callable] = None) -> dict:
        """Load a local checkpoint safely (``weights_only``, memory-mapped) into the (sharded) model.

        ``callback`` (the runner's ``after_load_checkpoint`` hooks) sees the whole checkpoint; only the entries the
        file itself holds are copied into the model (a hook may add the model's own frozen weights, which are
        already in place)."""

        self.logger.info(f'Load checkpoint from {filename}')
        checkpoint = load_state_dict(filename, map_location='cpu', mmap=True)
        if not isinstance(checkpoint.get('state_dict'), dict):
            raise KeyError(f'{filename} has no state_dict: not a training checkpoint')
        in_file = set(checkpoint['state_dict'])
        select_rank_random_state(checkpoint, get_dist_info()[0])
        if callback is not None:
            callback(checkpoint)
        state = {key: value for key, value in checkpoint.pop('state_dict').items() if key in in_file}
        self.load_model_state_dict(state, strict=strict, revise_keys=revise_keys)
        return checkpoint

    def save_checkpoint(self, filename: str, *, save_optimizer: bool = True, save_param_scheduler: bool = True,
                        extra_ckpt: Optional[dict] = None, callback: Optional[Callable] = None) -> None:
        """Gather (collective, every rank), then rank 0 writes ``filename`` atomically."""
        state: dict = dict(state_dict=self.model_state_dict())
        if save_optimizer and hasattr(self, 'optim_wrapper'):
            state['optimizer'] = self.optim_state_dict()
        random_states = gather_rank_random_states(self.model)
        if get_dist_info()[0] != 0:
            return
        if save_param_scheduler and hasattr(self, 'param_schedulers'):
            state['param_schedulers'] = self.scheduler_state_dict()
        extra_ckpt = dict(extra_ckpt or {})
        extra_ckpt['meta'] = dict(extra_ckpt.get('meta') or {}, seed=self.seed,
                                  time=time.strftime('%Y%m%d_%H%M%S', time.localtime()),
                                  mmengine=mmengine.__version__ + get_git_hash(),
                                  world_size=get_dist_info()[1], strategy=type(self).__name__)
        state.update(extra_ckpt)
        state['rank_random_states'] = random_states
        if callback is not None:
            callback(state)
        temporary = filename + TEMPORARY_SUFFIX
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        torch.save(state, temporary)
        publish_file(temporary, filename)
