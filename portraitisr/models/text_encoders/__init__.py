from .clip_text_encoder import CLIPTextEncoder, bundled_clip_tokenizer_dir
from .sdxl_text_encoder import SDXLTextEncoder

__all__ = ['CLIPTextEncoder', 'SDXLTextEncoder', 'bundled_clip_tokenizer_dir']
