# PortraitSR (AAAI 2026) Table 3, row 4 - attention fusion: "Base ✓ | PM ✓ | ✗ | Att ✓ | Cat ✗ | SSP ✗ | 27.65 / 0.813".
# "naive fusion strategies (Attention, Concat) degrade results due to semantic misalignment". The paper gives no
# formula; ours: F_SSP = F_latent * sigmoid(Conv3x3(F_pm)), a gate on every channel and pixel (SketchingStructurePrior,
# fusion='attention'). PM supervision (L_pm) is kept, on the baseline (no ATP, no HPF).
_base_ = ['../portraitsr_x8_celeba.py']

model = dict(generator=dict(structure_prior='attention', texture_prior=None, holistic_fusion=False))
