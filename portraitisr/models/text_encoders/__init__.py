from .clip_text_encoder import CLIPTextEncoder, bundled_clip_tokenizer_dir

__all__ = ['CLIPTextEncoder', 'bundled_clip_tokenizer_dir']
