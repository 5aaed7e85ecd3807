# Stable Diffusion 2.1-base, the model OSEDiff and HeadsUp fine-tune (epsilon prediction, 512px).
# A local diffusers folder works too; nothing is downloaded unless PORTRAITISR_ALLOW_DOWNLOAD=1.
sd21_pretrained = 'stabilityai/stable-diffusion-2-1-base'

sd21_backbone = dict(
    type='OneStepSD',
    pretrained=sd21_pretrained,
    timestep=999,
    lora_rank=4,
    lora_alpha=8,  # peft's default, which OSEDiff relied on (scaling 2)
    frozen_dtype='bfloat16',
    gradient_checkpointing=True,
)
sd21_regularizer = dict(
    type='VSDRegularizer',
    pretrained=sd21_pretrained,
    lora_rank=4,
    lora_alpha=8,
    cfg_scale=7.5,
    vsd_timesteps=(20, 980),
    frozen_dtype='bfloat16',
    gradient_checkpointing=True,
)
sd21_text_encoder = dict(type='CLIPTextEncoder', pretrained=sd21_pretrained, dtype='bfloat16')
# HeadsUp (arXiv 2510.09924, appendix B): conv_in widened to 9 channels (LQ latent 4 + reference latent 4
# + face mask 1); the first 4 input channels and the bias come from SD, the 5 new ones are zero.
sd21_headsup_backbone = dict(sd21_backbone, in_channels=9)

# The taggers whose tags are the prompts of OSEDiff, HeadsUp and PiSA-SR (portraitisr/models/taggers): plain RAM
# (ram_swin_large_14m.pth) and DAPE, SeeSR's degradation-aware LoRA on it (DAPE.pth), from the model zoo. They are
# built on first use and kept out of checkpoints; `portraitisr download ram_swin_large_14m dape ram_tag_list
# ram_tag_list_threshold` fetches their files. DAPE tags each evaluation LQ once (cache_size: our choice, enough
# for a test set of 4096 images; 4096 short tag lists take well under 10 MB).
ram_tagger = dict(type='RAMTagger')
dape_tagger = dict(type='DAPETagger', cache_size=4096)
