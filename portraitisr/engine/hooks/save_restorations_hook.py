"""Write restored images to a folder during testing."""
import os
import os.path as osp
from typing import Optional, Sequence

from mmengine.hooks import Hook

from portraitisr.registry import HOOKS
from portraitisr.utils.image_io import tensor_to_image, write_image


@HOOKS.register_module()
class SaveRestorationsHook(Hook):
    """Save every test prediction as ``save_dir/<input name>.png`` (8-bit RGB)."""

    def __init__(self, save_dir: str) -> None:
        self.save_dir = save_dir

    def after_test_iter(self, runner, batch_idx: int, data_batch=None,
                        outputs: Optional[Sequence[dict]] = None) -> None:
        os.makedirs(self.save_dir, exist_ok=True)
        for i, output in enumerate(outputs or []):
            name = output.get('metainfo', {}).get('name') or f'{batch_idx:06d}_{i}'
            name = osp.splitext(name.replace('sample://', ''))[0] + '.png'
            write_image(osp.join(self.save_dir, name), tensor_to_image(output['pred']))
