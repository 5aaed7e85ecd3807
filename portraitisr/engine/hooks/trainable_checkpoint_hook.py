"""Checkpoints that hold only trained tensors (LoRA + conv_in), not the frozen SD weights."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from portraitisr.registry import HOOKS


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def _strip_wrappers(key: str) -> str:
    # MMSeparateDistributedDataParallel wraps children in DDP, which adds ``.module``.
    return key.replace('.module.', '.')


@HOOKS.register_module()
class TrainableCheckpointHook(Hook):
    """Drop frozen parameters from saved checkpoints and put them back when loading.

    An SD 2.1 OSEDiff checkpoint shrinks from ~5 GB to ~35 MB (the 8.5M trained values plus
    optimizer state). On load, the frozen weights the model already holds are merged into the
    checkpoint so the model loads completely, without a wall of "missing keys" warnings.
    """

    priority = 'VERY_LOW'  # after other hooks have added their entries

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = _unwrap(runner.model)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        state = checkpoint['state_dict']
        checkpoint['state_dict'] = type(state)(
            (key, value) for key, value in state.items() if _strip_wrappers(key) in trainable)
        checkpoint.setdefault('meta', {})['trainable_only'] = True

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not checkpoint.get('meta', {}).get('trainable_only'):
            return
        full = _unwrap(runner.model).state_dict()
        full.update({_strip_wrappers(k): v for k, v in checkpoint['state_dict'].items()})
        checkpoint['state_dict'] = full
