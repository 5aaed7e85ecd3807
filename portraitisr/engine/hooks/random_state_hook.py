"""Save and restore random state so a resumed run continues exactly."""
import random

import numpy as np
import torch
from mmengine.hooks import Hook

from portraitisr.registry import HOOKS


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Store torch's CPU and CUDA generator states (and those of model components that own a
    generator, such as the degradation) in each checkpoint, and restore them on resume.

    mmengine re-seeds a resumed run from the config seed, so the VAE posterior noise, the VSD
    timesteps and the degradation would differ from an uninterrupted run. The numpy state is
    deliberately not saved: the data loader is replayed on resume (``IterBasedTrainLoop``), which
    advances numpy's generator exactly as the first run did.

    Validation runs between the checkpoint and the next iteration, and merely creating its data
    loader iterator draws from torch's generator; the hook therefore also puts every generator
    back after validation, so that training does not depend on when it validates. (Building a
    data loader whose sampler has no ``seed`` draws one from numpy, so our configs give their
    validation samplers a fixed seed; then adding a validation set changes no training draw.)
    """

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = dict(torch=torch.get_rng_state())
        if torch.cuda.is_available():
            state['cuda'] = torch.cuda.get_rng_state_all()
        for name, module in self._generator_owners(runner):
            state[f'module:{name}'] = module.get_rng_state()
        checkpoint['random_state'] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = checkpoint.get('random_state')

    def before_train(self, runner) -> None:
        state = getattr(self, '_pending', None)
        self._pending = None
        if state is None or runner.iter == 0:  # ``load_from`` (fine-tuning) starts afresh
            return
        torch.set_rng_state(state['torch'])
        if 'cuda' in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])
        for name, module in self._generator_owners(runner):
            if f'module:{name}' in state:
                module.set_rng_state(state[f'module:{name}'])

    def before_val(self, runner) -> None:
        self._before_val = (torch.get_rng_state(),
                            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                            np.random.get_state(), random.getstate())

    def after_val(self, runner) -> None:
        state = getattr(self, '_before_val', None)
        if state is None:
            return
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state_all(state[1])
        np.random.set_state(state[2])
        random.setstate(state[3])
        self._before_val = None

    @staticmethod
    def _generator_owners(runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        for name, module in model.named_modules():
            if callable(getattr(module, 'get_rng_state', None)) and callable(
                    getattr(module, 'set_rng_state', None)):
                yield name, module
