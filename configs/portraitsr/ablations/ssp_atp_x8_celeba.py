# PortraitSR (AAAI 2026) Table 2, row 4 - SSP and ATP without HPF: "Baseline ✓ | SSP ✓ | ATP ✓ | HPF ✗ | CelebA
# 27.74 (+0.17) | Helen 27.47 (+0.22)". The paper: "combining both leads to further gains ... However, the improvement
# remains limited due to insufficient interaction. Introducing HPF results in a significant performance boost."
# Without HPF the chained priors feed the decoder: D_sr(F_ATP) with F_ATP = ATP(F_SSP) (our reading: HPF's Eq. 10
# is replaced by decoding the last prior's output). All five losses stay.
# Row 5 (all three, 27.90 / 27.70) is ../portraitsr_x8_celeba.py.
_base_ = ['../portraitsr_x8_celeba.py']

model = dict(generator=dict(structure_prior='ssp', texture_prior='joint', holistic_fusion=False))
