default_scope = 'portraitisr'

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches to gloo on machines without CUDA
    dist_cfg=dict(backend='nccl'),
)
# OSEDiff trains with seed 123; different ranks see different crops and degradations.
randomness = dict(seed=123, diff_rank_seed=True)

# Models with several optimisers implement train_step: only the separate wrapper calls it.
model_wrapper_cfg = dict(
    type='MMSeparateDistributedDataParallel', broadcast_buffers=False, find_unused_parameters=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Saves, updates last_checkpoint, and only then deletes old checkpoints (atomic writes by PortraitRunner).
    # In this scope 'CheckpointHook' names the same hook, so configs that name mmengine's get it too.
    checkpoint=dict(type='AtomicCheckpointHook', interval=500, by_epoch=False, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
# Checkpoints: trained tensors only, loadable with torch.load(weights_only=True), with the random
# state so that --resume continues exactly.
custom_hooks = [
    dict(type='TrainableCheckpointHook'),
    dict(type='WeightsOnlyCheckpointHook'),
    dict(type='RandomStateHook'),
]

log_processor = dict(type='LogProcessor', by_epoch=False, window_size=50)
log_level = 'INFO'
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
load_from = None
resume = False
