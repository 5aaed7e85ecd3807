from . import hooks, loops, optimizers, runners, strategies
from .checkpoint_loading import (CHECKPOINT_ERRORS, CheckpointNotFoundError, UntrustedCheckpointError,
                                 checkpoint_training_info, find_resumable_checkpoint, load_checkpoint_file,
                                 resolve_checkpoint, verify_checkpoint)
from .checkpoint_safety import WeightsOnlyCheckpointHook
from .hooks import AtomicCheckpointHook, RandomStateHook, SaveRestorationsHook, TrainableCheckpointHook
from .loops import TolerantTestLoop
from .optimizers import TrainableParamsOptimWrapperConstructor
from .runners import PortraitFlexibleRunner, PortraitRunner
from .strategies import FSDP2Strategy

__all__ = ['hooks', 'loops', 'optimizers', 'runners', 'strategies', 'PortraitFlexibleRunner', 'FSDP2Strategy',
           'TolerantTestLoop',
           'WeightsOnlyCheckpointHook', 'AtomicCheckpointHook', 'RandomStateHook',
           'SaveRestorationsHook', 'TrainableCheckpointHook', 'TrainableParamsOptimWrapperConstructor',
           'PortraitRunner', 'CHECKPOINT_ERRORS', 'CheckpointNotFoundError', 'UntrustedCheckpointError',
           'checkpoint_training_info', 'find_resumable_checkpoint', 'load_checkpoint_file', 'resolve_checkpoint',
           'verify_checkpoint']
