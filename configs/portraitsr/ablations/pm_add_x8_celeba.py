# PortraitSR (AAAI 2026) Table 3, row 3 - UNCERTAIN: "Base ✓ | PM ✓ | ✓ | Att ✗ | Cat ✗ | SSP ✗ | 27.68 / 0.813".
# Table 3 has six check columns but only five headers (Base, PM, Att, Cat, SSP) survive in the text of the paper we
# have; the third column is unnamed. We read it as a third "naive fusion" next to Attention and Concat and guess
# element-wise addition: F_SSP = F_latent + Conv1x1(F_pm). Replace this config if the paper's original table names
# another strategy. PM supervision (L_pm) is kept, on the baseline (no ATP, no HPF).
_base_ = ['../portraitsr_x8_celeba.py']

model = dict(generator=dict(structure_prior='add', texture_prior=None, holistic_fusion=False))
