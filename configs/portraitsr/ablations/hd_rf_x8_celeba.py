# PortraitSR (AAAI 2026) Table 4, row 2 - HD-RF: "BL ✓ | HD-RF ✓ | HD-Retrain × | Ours × | CelebA 27.62 (+0.05) |
# Helen 27.37 (+0.12)". "HD-RF: a pretrained HD learned from an external dataset". We read RF as RestoreFormer, whose
# "HQ Dictionary" (configs/HQ_Dictionary.yaml of its repository: 1024 entries x 256 channels, learned on FFHQ 512) the
# paper's related work describes. ATP reads that dictionary, held fixed, on the baseline (no SSP, no HPF); there is
# no reconstruction branch (no L_rec, no L_dic). A learnable linear map takes its 256-wide entries to the 384-wide
# latent (the paper does not say how it matched the widths; see AssociativeTexturePrior).
# The file: the codebook tensor (RestoreFormer's `vqvae.quantize.embedding.weight`, 1024 x 256) saved on its own
# (e.g. safetensors), since a Lightning checkpoint also holds pickled objects that portraitisr will not load.
_base_ = ['../portraitsr_x8_celeba.py']

model = dict(generator=dict(structure_prior=None, texture_prior='fixed', holistic_fusion=False,
                            dictionary_weights='data/dictionaries/restoreformer_hq_dictionary_ffhq.safetensors'))
train_dataloader = dict(dataset=dict(parsing_root=None))
