# AuthFace (the full method, Table 2 (d)) on WebPhoto-Test (real, no GT): AuthFace (arXiv 2410.09864), Table 1.
#   python tools/test.py configs/authface/authface_sdxl_webphoto_test.py work_dirs/authface_stage2_sdxl/iter_50000.pth
# One process restores (PortraitRunner); the model needs the stage-I checkpoint for its frozen UNet.
_base_ = ['./authface_stage2_sdxl.py', '../_base_/datasets/authface_bfr_test.py']

runner_type = 'PortraitRunner'
test_sets = [{{_base_.webphoto_test_set}}]
test_dataloader = {{_base_.webphoto_test_set.dataloader}}
test_evaluator = {{_base_.webphoto_test_set.evaluator}}
