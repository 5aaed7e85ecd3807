# PortraitSR (AAAI 2026) Table 5, row 2 - structural cues injected into 1 decoder layer(s):
# "1-layer | PSNR 27.86/27.68 | SSIM 0.818/0.833 | LPIPS 0.079/0.085 | VIF 0.416/0.425" (CelebA/Helen, x8).
# "we study the effect of injecting structural cues at different decoder stages ... performance consistently
# degrades with deeper-stage injection". The full model plus SSP's modulation (Eq. 2-3, one 3x3 conv per stage, on
# the parsing features F_pm resized to the stage) after the first 1 decoder stage(s) (H/4). The paper gives
# no formula for this injection: reusing SSP's modulation is our reading. Row 1 ("None": PSNR 27.90/27.70, SSIM
# 0.819/0.832, LPIPS 0.079/0.089, VIF 0.418/0.425) is ../portraitsr_x8_celeba.py.
_base_ = ['../portraitsr_x8_celeba.py']

model = dict(generator=dict(decoder_structure_layers=1))
