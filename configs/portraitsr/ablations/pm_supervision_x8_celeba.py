# PortraitSR (AAAI 2026) Table 3, row 2 - parsing-map supervision only: "Base ✓ | PM ✓ | ✗ | Att ✗ | Cat ✗ | SSP ✗ |
# 27.65 / 0.812" (PSNR / SSIM, CelebA x8). "PM supervision enhances performance": the parsing decoder D_pm (Eq. 1)
# trained by L_pm (Eq. 12) shapes the shared encoder, but its features are not injected: D_sr(F_latent).
# Table 3 is built on the baseline (its row 1 is Table 2's baseline, 27.57): no ATP, no HPF.
_base_ = ['../portraitsr_x8_celeba.py']

model = dict(generator=dict(structure_prior='supervision', texture_prior=None, holistic_fusion=False))
