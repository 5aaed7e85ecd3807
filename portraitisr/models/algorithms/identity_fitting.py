"""IDFSR stage 2: fit one identity embedding to a few photos of a person (IDFSR, section 3.3).

"In the finetuning stage, we freeze both the U-Net and the style encoder, and solely optimize a learnable ID
embedding initialized from a reference image", under the pretraining objective (Eq. 1) and the same
hyper-parameters (Adam, learning rate 1e-4, no weight decay; Table 4). :class:`IdentityFitter` does exactly that
for an :class:`~portraitisr.models.algorithms.idfsr.IDFSR`: every tensor of the model is frozen and the network
runs in eval mode (dropout off: it regularises weights, and no weight moves here; our choice), the only trainable
tensor is the embedding, and all randomness (which photos, timesteps, noise) comes from the fitter's own
``torch.Generator``, so that :meth:`state_dict` / :meth:`load_state_dict` resume a fit exactly. Its state holds only
tensors (safetensors-ready).
"""
from typing import Dict, List

import torch
from mmengine.dataset import pseudo_collate
from torch import Tensor, nn

from .idfsr import IDFSR

__all__ = ['IdentityFitter']


class IdentityFitter:
    """Optimise ``z_id`` of ``model`` on preprocessed items of one person.

    Args:
        model: a trained IDFSR with identity cross-attention.
        items: dataset items of the person's photos (``IdentityFaceDataset`` items: ``gt``, ``lq``, ``ref``,
            metainfo with ``face_landmarks``/``ref_landmarks``); they are batched by the model's data preprocessor.
        init: ``D`` initial embedding (IDFSR: the embedding of a reference photo).
        lr: Adam learning rate (1e-4 in the paper).
        batch_size: photos per step (drawn without replacement within a step).
        seed: seed of the fitter's generator.
    """

    def __init__(self, model: IDFSR, items: List[dict], init: Tensor, lr: float = 1e-4, batch_size: int = 4,
                 seed: int = 0) -> None:
        if not model.uses_identity:
            raise ValueError('identity fitting needs an IDFSR with identity cross-attention')
        if not items:
            raise ValueError('identity fitting needs at least one photo')
        init = torch.as_tensor(init, dtype=torch.float32).reshape(-1)
        if init.numel() != model._unet.id_channels:
            raise ValueError(f'the initial embedding has {init.numel()} values, the model takes '
                             f'{model._unet.id_channels}')
        self.model = model.eval().requires_grad_(False)
        self.device = next(model.parameters()).device
        self.items, self.batch_size = items, min(int(batch_size), len(items))
        self.embedding = nn.Parameter(init.to(self.device).clone())
        self.optimizer = torch.optim.Adam([self.embedding], lr=lr, weight_decay=0)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.step_count = 0

    def batch(self) -> dict:
        """The next preprocessed batch (photos drawn from the fitter's generator)."""
        order = torch.randperm(len(self.items), generator=self.generator)[:self.batch_size].tolist()
        return self.model.data_preprocessor(pseudo_collate([self.items[i] for i in order]), False)

    def loss(self, data: dict) -> Tensor:
        """Eq. 1 on ``data`` with ``z_id`` = the embedding (timesteps and noise from the fitter's generator)."""
        cond = self.model.conditions(data['inputs'], data['face_landmarks'], data.get('ref'),
                                     data.get('ref_landmarks'))
        identity = self.embedding[None].expand(data['gt'].shape[0], -1)
        return self.model.diffusion_loss(data['gt'], cond, identity, generator=self.generator).mean()

    def step(self) -> float:
        """One Adam step; returns the loss."""
        loss = self.loss(self.batch())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self, seed: int = 1234, repeats: int = 4) -> float:
        """Mean loss over every photo at fixed timesteps and noise (``seed``), ``repeats`` draws each: comparable
        across steps, it does not touch the fitter's generator."""
        generator = torch.Generator().manual_seed(seed)
        data = self.model.data_preprocessor(pseudo_collate(self.items), False)
        cond = self.model.conditions(data['inputs'], data['face_landmarks'], data.get('ref'),
                                     data.get('ref_landmarks'))
        identity = self.embedding[None].expand(data['gt'].shape[0], -1)
        losses = [self.model.diffusion_loss(data['gt'], cond, identity, generator=generator).mean()
                  for _ in range(repeats)]
        return float(torch.stack(losses).mean())

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Tensor]:
        """Everything a resumed fit needs, as tensors: embedding, Adam moments and step, generator, step count."""
        state = {'embedding': self.embedding.detach().cpu().clone(), 'generator': self.generator.get_state(),
                 'step_count': torch.tensor(self.step_count, dtype=torch.int64)}
        adam = self.optimizer.state.get(self.embedding)
        if adam:
            state.update(exp_avg=adam['exp_avg'].cpu().clone(), exp_avg_sq=adam['exp_avg_sq'].cpu().clone(),
                         adam_step=torch.as_tensor(adam['step'], dtype=torch.float32).reshape(()).cpu().clone())
        return state

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        with torch.no_grad():
            self.embedding.copy_(state['embedding'].to(self.embedding))
        self.generator.set_state(state['generator'])
        self.step_count = int(state['step_count'])
        self.optimizer.state.clear()
        if 'exp_avg' in state:
            self.optimizer.state[self.embedding] = dict(
                step=state['adam_step'].clone().float(), exp_avg=state['exp_avg'].to(self.embedding).clone(),
                exp_avg_sq=state['exp_avg_sq'].to(self.embedding).clone())
