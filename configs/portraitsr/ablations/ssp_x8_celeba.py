# PortraitSR (AAAI 2026) Table 2, row 2 - baseline + SSP: "Baseline ✓ | SSP ✓ | ATP ✗ | HPF ✗ | CelebA 27.72 (+0.15)
# | Helen 27.44 (+0.19)". Also Table 3's last row ("Base ✓ PM ✓ ... SSP ✓ | 27.44 / 0.823" as printed; Table 2 gives
# this model 27.72 on CelebA and 27.44 on Helen, so the printed Table 3 cell looks shifted).
# SSP (Eq. 1-3) on the baseline, no ATP, no HPF: D_sr(F_SSP). Losses L_1 + 0.1 L_per + 0.005 L_pm.
_base_ = ['../portraitsr_x8_celeba.py']

model = dict(generator=dict(structure_prior='ssp', texture_prior=None, holistic_fusion=False))
