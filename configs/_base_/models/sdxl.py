# Stable Diffusion XL 1.0-base, AuthFace's text-to-image prior (arXiv 2410.09864, section 4.1: "Our base model
# is initialized from StableDiffusion-XL"). A local diffusers folder works too; nothing is downloaded unless
# PORTRAITISR_ALLOW_DOWNLOAD=1. The architecture is in portraitisr/models/backbones/sdxl_architecture.py.
sdxl_pretrained = 'stabilityai/stable-diffusion-xl-base-1.0'
# both CLIP encoders, frozen: penultimate states concatenated (768 + 1280) and the pooled, projected 1280
sdxl_text_encoder = dict(type='SDXLTextEncoder', pretrained=sdxl_pretrained, dtype='bfloat16')
# FSDP2 units inside the UNet and the ControlNet: every ResNet block and every transformer block
sdxl_block_classes = ['ResnetBlock2D', 'BasicTransformerBlock']
# bf16 compute with float32 master weights, optimiser states and gradient reduction
sdxl_mixed_precision = dict(param_dtype='bfloat16', reduce_dtype='float32')
