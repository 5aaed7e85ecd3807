# AuthFace Table 2 (d) (arXiv 2410.09864, section 4.3): the fine-tuned prior with the time-aware latent facial
# feature loss (Eq. 3-4) - the full method, configs/authface/authface_stage2_sdxl.py.
_base_ = ['../authface_stage2_sdxl.py']
