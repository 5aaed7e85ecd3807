# PortraitSR (AAAI 2026) Table 3, row 5 - concatenation fusion: "Base ✓ | PM ✓ | ✗ | Att ✗ | Cat ✓ | SSP ✗ |
# 27.72 / 0.813". The paper gives no formula; ours: F_SSP = Conv1x1([F_latent, F_pm]) (SketchingStructurePrior,
# fusion='concat'). PM supervision (L_pm) is kept, on the baseline (no ATP, no HPF).
_base_ = ['../portraitsr_x8_celeba.py']

model = dict(generator=dict(structure_prior='concat', texture_prior=None, holistic_fusion=False))
