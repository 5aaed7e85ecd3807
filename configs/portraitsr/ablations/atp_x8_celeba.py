# PortraitSR (AAAI 2026) Table 2, row 3 - baseline + ATP: "Baseline ✓ | SSP ✗ | ATP ✓ | HPF ✗ | CelebA 27.66 (+0.09)
# | Helen 27.40 (+0.15)". Also Table 4's "Ours" row ("BL ✓ HD-RF × HD-Retrain × Ours ✓ | 27.66 (+0.09) | 27.40
# (+0.15)"): the dictionary "jointly trained within the same framework and dataset".
# ATP (Eq. 4-6) on F_latent (there is no F_SSP), no HPF: D_sr(F_ATP). No parsing decoder, so no L_pm; the HR
# reconstruction branch stays: L_1 + 0.1 L_per + 0.5 L_rec + 0.001 L_dic.
_base_ = ['../portraitsr_x8_celeba.py']

model = dict(generator=dict(structure_prior=None, texture_prior='joint', holistic_fusion=False))
train_dataloader = dict(dataset=dict(parsing_root=None))
