# PortraitSR "Implementation Details": Adam, betas (0.9, 0.99), initial learning rate 2e-4. The paper gives
# neither the batch size, the number of iterations nor a decay: a constant rate and 200k iterations are our choice.
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=2e-4, betas=(0.9, 0.99)))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=200000, val_interval=5000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
