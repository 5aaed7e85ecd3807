# IDFSR (arXiv 2508.10937) Table 4: Adam without weight decay, learning rate 1e-4 (both stages, section 3.3). Gradient
# clipping at norm 1 is DiffAE's (templates.py: grad_clip 1), the setup IDFSR starts from; the paper does not state
# one. It gives 2 days on four RTX 3090s, not an iteration count: 200k iterations is our choice.
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-4, weight_decay=0),
                     clip_grad=dict(max_norm=1.0))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=200000, val_interval=10000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
