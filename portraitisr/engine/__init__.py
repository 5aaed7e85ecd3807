from . import hooks, optimizers
from .checkpoint_safety import WeightsOnlyCheckpointHook
from .hooks import RandomStateHook, SaveRestorationsHook, TrainableCheckpointHook
from .optimizers import TrainableParamsOptimWrapperConstructor

__all__ = ['hooks', 'optimizers', 'WeightsOnlyCheckpointHook', 'RandomStateHook',
           'SaveRestorationsHook', 'TrainableCheckpointHook',
           'TrainableParamsOptimWrapperConstructor']
