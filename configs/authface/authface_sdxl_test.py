# AuthFace (the full method) on all four test sets of Table 1 (arXiv 2410.09864, section 4.1): CelebA-Test,
# LFW-Test, WebPhoto-Test, WIDER-Test; one table row per set.
#   python tools/test.py configs/authface/authface_sdxl_test.py work_dirs/authface_stage2_sdxl/iter_50000.pth
_base_ = ['./authface_stage2_sdxl.py', '../_base_/datasets/authface_bfr_test.py']

runner_type = 'PortraitRunner'
test_sets = [{{_base_.celeba_test_set}}, {{_base_.lfw_test_set}}, {{_base_.webphoto_test_set}},
             {{_base_.wider_test_set}}]
test_dataloader = {{_base_.celeba_test_set.dataloader}}
test_evaluator = {{_base_.celeba_test_set.evaluator}}
