"""One optimizer wrapper per trainable child module (generator, regulariser, discriminator)."""
import copy
from typing import Optional

from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from torch import nn

from portraitisr.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TrainableParamsOptimWrapperConstructor:
    """Build an ``OptimWrapperDict`` keyed by child-module name from only trainable parameters.

    Config::

        optim_wrapper = dict(
            constructor='TrainableParamsOptimWrapperConstructor',
            backbone=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=5e-5)),
            regularizer=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=5e-5)))

    Each key names a child of the model (``model.backbone``...). Frozen SD weights never reach an
    optimizer, and a trainable parameter that no key covers is an error rather than a silently
    untrained weight. A key set to None is dropped, so a derived config that removes a child
    (``model = dict(discriminator=None)``) removes its optimizer with
    ``optim_wrapper = dict(discriminator=None)``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        if paramwise_cfg:
            raise ValueError('paramwise_cfg is not supported: give each child its own wrapper')
        optim_wrapper_cfg = {k: v for k, v in dict(optim_wrapper_cfg or {}).items() if v is not None}
        if not optim_wrapper_cfg or not all(isinstance(v, dict) for v in optim_wrapper_cfg.values()):
            raise ValueError('optim_wrapper must map child-module names to optimizer-wrapper '
                             f'configs, got keys {list(optim_wrapper_cfg)}')
        self.optim_wrapper_cfg = copy.deepcopy(dict(optim_wrapper_cfg))

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        if is_model_wrapper(model):
            model = model.module
        wrappers, covered = {}, set()
        for name, cfg in self.optim_wrapper_cfg.items():
            child = getattr(model, name, None)
            if not isinstance(child, nn.Module):
                children = [n for n, _ in model.named_children()]
                raise KeyError(f'optim_wrapper key {name!r} is not a child module of '
                               f'{type(model).__name__}; children: {children}')
            params = [p for p in child.parameters() if p.requires_grad]
            if not params:
                raise ValueError(f'{name!r} has no trainable parameters')
            covered.update(id(p) for p in params)
            cfg = dict(cfg)
            optimizer_cfg = dict(cfg.pop('optimizer'))
            optimizer_cfg['params'] = params
            cfg.setdefault('type', 'OptimWrapper')
            wrappers[name] = OPTIM_WRAPPERS.build(dict(cfg, optimizer=OPTIMIZERS.build(optimizer_cfg)))
        uncovered = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if uncovered:
            raise ValueError(f'{len(uncovered)} trainable parameters have no optimizer, e.g. '
                             f'{uncovered[:3]}: add their child module to optim_wrapper')
        return OptimWrapperDict(**wrappers)
