from .atomic_checkpoint_hook import AtomicCheckpointHook
from .progress_bar_hook import ProgressBarHook
from .random_state_hook import RandomStateHook
from .save_restorations_hook import SaveRestorationsHook
from .trainable_checkpoint_hook import TrainableCheckpointHook

__all__ = ['AtomicCheckpointHook', 'ProgressBarHook', 'RandomStateHook', 'SaveRestorationsHook',
           'TrainableCheckpointHook']
