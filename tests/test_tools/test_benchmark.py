"""tools/benchmark.py: the table it prints, and the pieces its cswry/OSEDiff comparison rests on.

The comparison itself needs OSEDiff's checkout and its pinned environment, which CI does not have; it was run on
CPU with ``--tiny`` (docs/benchmarks.md). These tests pin what broke it before: the SD folder layout that older
transformers read, and running CUDA-only reference code on a CPU.
"""
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn
from tests.helpers.data_files import REPO_ROOT


def _load_tool(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem, REPO_ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def benchmark_tool():
    return _load_tool('tools/benchmark.py')


def test_cuda_calls_run_on_cpu(benchmark_tool):
    layer = nn.Linear(2, 2)
    with benchmark_tool.CudaCallsOnCpu():
        moved = torch.ones(2).cuda()
        made = torch.tensor([999], device='cuda')
        zeros = torch.zeros(3, device=torch.device('cuda:0'))
        to_device = torch.ones(2).to('cuda', dtype=torch.float16)
        layer.to('cuda', dtype=torch.float64)
    assert {t.device.type for t in (moved, made, zeros, to_device)} == {'cpu'}
    assert to_device.dtype == torch.float16  # only the device is redirected
    assert layer.weight.device.type == 'cpu' and layer.weight.dtype == torch.float64
    with benchmark_tool.CudaCallsOnCpu():
        assert torch.full((1, ), 2.0, device='cpu').item() == 2.0  # other calls are untouched


def test_sd_text_encoder_folder_has_the_hub_key_layout(benchmark_tool, tmp_path):
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, vocab_size=49408)).eval()
    benchmark_tool.write_sd_text_encoder_folder(model, str(tmp_path))
    with safe_open(str(tmp_path / 'model.safetensors'), 'pt') as f:
        keys = list(f.keys())
    # transformers 4.x (OSEDiff's environment) silently re-initialises every weight without this prefix
    assert keys and all(k.startswith('text_model.') for k in keys)
    loaded = CLIPTextModel.from_pretrained(str(tmp_path)).eval()  # and current transformers reads it back
    ids = torch.tensor([[49406, 320, 1400, 49407] + [0] * 73])
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], model(ids)[0])


def test_sd_tokenizer_folder_tokenizes_like_our_text_encoder(benchmark_tool, tmp_path):
    from transformers import CLIPTokenizer

    from portraitisr.models.text_encoders import bundled_clip_tokenizer_dir

    benchmark_tool.write_sd_tokenizer_folder(str(tmp_path))
    assert not (tmp_path / 'tokenizer.json').exists()  # its format changes between tokenizers releases
    theirs = CLIPTokenizer.from_pretrained(str(tmp_path))
    ours = CLIPTokenizer.from_pretrained(bundled_clip_tokenizer_dir(), model_max_length=77, pad_token='!')
    kwargs = dict(max_length=77, padding='max_length', truncation=True)
    ids = theirs(benchmark_tool.PROMPT, **kwargs).input_ids
    assert ids == ours(benchmark_tool.PROMPT, **kwargs).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 0  # SD 2.x pads with "!" (id 0)


def test_tiny_benchmark_writes_every_path(benchmark_tool, tmp_path):
    out = tmp_path / 'rows.json'
    benchmark_tool.main(['--tiny', '--sizes', '64', '--train-size', '0', '--warmup', '0', '--repeats', '1',
                    '--json', str(out)])
    result = json.loads(out.read_text())
    assert result['device'].startswith('CPU')
    assert sorted(row['path'] for row in result['rows']) == ['merged bfloat16', 'merged float32', 'unmerged fp32']
    assert all(row['size'] == 64 and row['seconds'] > 0 for row in result['rows'])


def test_offline_kit_run_script_is_valid_bash(tmp_path):
    kit = _load_tool('tools/benchmarks/offline_gpu_kit.py')
    script = tmp_path / 'run.sh'
    script.write_text(kit.RUN_SH)
    subprocess.run(['bash', '-n', str(script)], check=True)
    with pytest.raises(SystemExit, match='not a cswry/OSEDiff checkout'):
        kit.copy_osediff(str(tmp_path), str(tmp_path / 'copy'))
    assert not os.path.exists(tmp_path / 'copy')
