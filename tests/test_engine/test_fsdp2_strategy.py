"""FSDP2Strategy and PortraitFlexibleRunner in one process (the two-process checks:
tests/test_engine/test_sharded_training.py)."""
import pytest
import torch
from torch import nn

from portraitisr.engine.strategies import FSDP2Strategy, select_rank_random_state
from portraitisr.registry import RUNNERS, STRATEGIES


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.frozen = nn.Linear(4, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.frozen(self.body(x))


def _strategy(tmp_path, **kwargs):
    return FSDP2Strategy(shard_modules=['body'], work_dir=str(tmp_path),
                         env_kwargs=dict(launcher='none', randomness=dict(seed=0)), **kwargs)


def test_single_process_checkpoint_round_trip(tmp_path):
    strategy = _strategy(tmp_path)
    strategy.prepare(_Tiny(), optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=0.1)))
    model, wrapper = strategy.model, strategy.optim_wrapper
    wrapper.update_params(model(torch.randn(5, 3)).pow(2).mean())
    seen = {}
    strategy.save_checkpoint(str(tmp_path / 'iter_1.pth'), extra_ckpt=dict(meta=dict(iter=1, epoch=0)),
                             callback=lambda checkpoint: seen.update(checkpoint))
    assert not (tmp_path / 'iter_1.pth.tmp').exists() and (tmp_path / 'iter_1.pth').is_file()
    saved = torch.load(tmp_path / 'iter_1.pth', weights_only=True)
    assert set(saved['optimizer']['state']) == {'body.weight', 'body.bias'}  # keyed by parameter names
    assert saved['meta']['world_size'] == 1 and saved['meta']['strategy'] == 'FSDP2Strategy'
    assert len(saved['rank_random_states']) == 1 and 'state_dict' in seen
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    moments = saved['optimizer']['state']['body.weight']['exp_avg'].clone()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    checkpoint = strategy.resume(str(tmp_path / 'iter_1.pth'))
    assert checkpoint['meta']['iter'] == 1
    for key, value in expected.items():
        assert torch.equal(model.state_dict()[key], value), key
    state = wrapper.optimizer.state[model.body.weight]
    assert torch.equal(state['exp_avg'], moments)


def test_rank_random_states_go_to_their_rank():
    checkpoint = dict(random_state=dict(torch=torch.tensor([0]), other=1),
                      rank_random_states=[dict(torch=torch.tensor([10])), dict(torch=torch.tensor([11]))])
    select_rank_random_state(checkpoint, 1)
    assert int(checkpoint['random_state']['torch']) == 11 and checkpoint['random_state']['other'] == 1
    select_rank_random_state(checkpoint, 5)  # more ranks now than when saved: rank 0's stays
    assert int(checkpoint['random_state']['torch']) == 11


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match='mixed_precision'):
        _strategy(tmp_path, mixed_precision=dict(param_dtype='int8'))
    strategy = _strategy(tmp_path)
    strategy.prepare(_Tiny())
    with pytest.raises(ValueError, match='AMP optimiser wrappers'):
        strategy.build_optim_wrapper(dict(type='AmpOptimWrapper', optimizer=dict(type='SGD', lr=0.1)), strategy.model)
    assert STRATEGIES.get('FSDP2Strategy') is FSDP2Strategy
    assert RUNNERS.get('PortraitFlexibleRunner').__name__ == 'PortraitFlexibleRunner'
