# OSEDiff (train_osediff.py): AdamW lr 5e-5, betas (0.9, 0.999), wd 1e-2, eps 1e-8, grad-norm
# clip 1.0, constant learning rate, one optimiser for the generator and one for the regulariser.
adamw = dict(type='AdamW', lr=5e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
optim_wrapper = dict(
    constructor='TrainableParamsOptimWrapperConstructor',
    backbone=dict(type='OptimWrapper', optimizer=adamw, clip_grad=dict(max_norm=1.0)),
    regularizer=dict(type='OptimWrapper', optimizer=adamw, clip_grad=dict(max_norm=1.0)),
)
# The maintainer's official run stopped after about 14k iterations (OSEDiff issue #58).
train_cfg = dict(type='IterBasedTrainLoop', max_iters=14000, val_interval=1000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
