# PortraitSR (AAAI 2026) Table 2, row 1 - the baseline: "Baseline ✓ | SSP ✗ | ATP ✗ | HPF ✗ | CelebA 27.57 | Helen
# 27.25". The same model is Table 3's row 1 ("Base ✓ ... | 27.57 / 0.810") and Table 4's "BL" row (27.57 / 27.25).
# The Transformer encoder-decoder alone: D_sr(F_latent). No parsing decoder (no L_pm), no dictionary and no HR
# reconstruction branch (no L_rec, no L_dic): L_1 + 0.1 L_per.
_base_ = ['../portraitsr_x8_celeba.py']

model = dict(generator=dict(structure_prior=None, texture_prior=None, holistic_fusion=False))
# nothing reads parsing maps without a structure prior
train_dataloader = dict(dataset=dict(parsing_root=None))
