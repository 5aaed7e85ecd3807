"""Checkpoints that hold only trained tensors (LoRA, conv_in, discriminators), not the frozen SD weights."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from portraitisr.registry import HOOKS


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def _strip_wrappers(key: str) -> str:
    # MMSeparateDistributedDataParallel wraps children in DDP, which adds ``.module``.
    return key.replace('.module.', '.')


def _trains_directly(module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def trainable_names(model) -> set:
    """Names of the trainable parameters and of the buffers that training updates, without
    distributed-wrapper prefixes.

    Those buffers belong to a module with trainable parameters of its own, or to a child of one:
    BatchNorm running statistics, and spectral normalisation's power-iteration vectors (held by the
    parametrization, a child of the ``ParametrizationList`` that owns the trained weight). Without
    them a resumed discriminator would not continue exactly.
    """
    root = _unwrap(model)
    names = {_strip_wrappers(n) for n, p in root.named_parameters() if p.requires_grad}
    modules = dict(root.named_modules())
    for name, _ in root.named_buffers():
        owner = name.rpartition('.')[0]
        parent = owner.rpartition('.')[0]
        if _trains_directly(modules[owner]) or (owner and _trains_directly(modules[parent])):
            names.add(_strip_wrappers(name))
    return names


@HOOKS.register_module()
class TrainableCheckpointHook(Hook):
    """Drop frozen parameters from saved checkpoints and put them back when loading.

    Keys are saved without distributed-wrapper prefixes (``backbone.unet...``, not
    ``backbone.module.unet...``), so one checkpoint serves single-process and multi-GPU runs.
    An SD 2.1 OSEDiff checkpoint shrinks from ~5 GB to ~100 MB (the 8.5M trained values and
    AdamW's two moment buffers for each). On load, the frozen weights the model already holds
    are merged into the checkpoint so the model loads completely, without a wall of "missing
    keys" warnings.
    """

    priority = 'VERY_LOW'  # after other hooks have added their entries

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        trainable = trainable_names(runner.model)
        state = checkpoint['state_dict']
        checkpoint['state_dict'] = type(state)(
            (_strip_wrappers(key), value) for key, value in state.items()
            if _strip_wrappers(key) in trainable)
        checkpoint.setdefault('meta', {})['trainable_only'] = True

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not checkpoint.get('meta', {}).get('trainable_only'):
            return
        # The model's own key layout (with ``.module.`` under a distributed wrapper).
        full = _unwrap(runner.model).state_dict()
        own_key = {_strip_wrappers(key): key for key in full}
        for key, value in checkpoint['state_dict'].items():
            full[own_key.get(_strip_wrappers(key), key)] = value
        checkpoint['state_dict'] = full
