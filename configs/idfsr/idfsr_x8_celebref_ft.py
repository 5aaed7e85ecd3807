# Table 1 (x8), "Ours (FT)": the pretrained network with each test identity's fitted embedding (stage 2, section
# 3.3). Fit them first (tools/fit_identity.py --per-identity ..., see idfsr_x8_celebref.py); each file is found by the
# identity's folder name.
_base_ = ['./idfsr_x8_celebref.py']

identity_dir = 'work_dirs/idfsr_x8_celebref/identities'
model = dict(test_identity='fitted', identity_dir=identity_dir, init_weights=None)
test_sets = [dict(_base_.test_sets[0], name='CelebRef-HQ x8 (FT)')]
