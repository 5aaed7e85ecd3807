"""Registries: lazy registration, clear errors for unknown types, a light package import."""
import subprocess
import sys

import pytest

from portraitisr.registry import BACKBONES, MODELS, PROMPTERS


def test_unknown_type_names_the_registry_and_the_choices():
    with pytest.raises(KeyError) as error:
        BACKBONES.build(dict(type='OneStepSDX'))
    message = str(error.value)
    assert "'OneStepSDX'" in message and 'backbone' in message and 'OneStepSD' in message
    with pytest.raises(KeyError, match='NullPrompter'):
        PROMPTERS.build(dict(type='Nope'))


def test_runner_registry_lookup_through_default_scope():
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope('portraitisr'):
        with pytest.raises(KeyError) as error:
            ROOT_MODELS.build(dict(type='OSEDif'))
    assert 'OSEDiff' in str(error.value)
    assert MODELS.get('OSEDiff').__name__ == 'OSEDiff'


def test_importing_the_package_is_light():
    code = ('import sys, portraitisr, portraitisr.registry; '
            'heavy = [m for m in ("diffusers", "kornia", "transformers", "peft", "lpips") '
            'if m in sys.modules]; print(heavy)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'


def test_wrong_config_key_names_the_class_and_the_key(tiny_cfg):
    with pytest.raises(TypeError) as error:
        BACKBONES.build(dict(tiny_cfg.tiny_backbone, lora_rnk=8))
    assert 'OneStepSD' in str(error.value) and 'lora_rnk' in str(error.value)
