# AuthFace Table 2 (c) (arXiv 2410.09864, section 4.3): the fine-tuned prior with the latent facial loss at a
# constant weight for every timestep ("Const."). With m = 0, s = 1 the time-aware weight of (d) averages
# 1 over the timesteps, so (c) and (d) differ only in where along t the weight goes.
_base_ = ['../authface_stage2_sdxl.py']

model = dict(facial_loss=dict(time_weighting='constant'))
