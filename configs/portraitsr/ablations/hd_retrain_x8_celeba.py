# PortraitSR (AAAI 2026) Table 4, row 3 - HD-Retrain: "BL ✓ | HD-RF × | HD-Retrain ✓ | Ours × | CelebA 27.61 (+0.04)
# | Helen 27.38 (+0.13)". "HD-Retrain: a retrained HD using a different model architecture on the target dataset":
# a dictionary learned by another architecture on CelebA (we read it as RestoreFormer's HQ-Dictionary stage, as in
# hd_rf_x8_celeba.py, retrained on data/celeba/train_128), held fixed, on the baseline (no SSP, no HPF); no
# reconstruction branch (no L_rec, no L_dic). Its width is mapped to the latent as in hd_rf_x8_celeba.py.
# The file: that dictionary's N x C tensor saved on its own (safetensors or a plain torch dict of tensors).
_base_ = ['../portraitsr_x8_celeba.py']

model = dict(generator=dict(structure_prior=None, texture_prior='fixed', holistic_fusion=False,
                            dictionary_weights='data/dictionaries/hq_dictionary_retrained_celeba.safetensors'))
train_dataloader = dict(dataset=dict(parsing_root=None))
