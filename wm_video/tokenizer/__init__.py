"""Frames ↔ tokens: a causal spatiotemporal tokenizer with FSQ codes (see :mod:`.model`)."""

from wm_video.tokenizer.config import TOKENIZER_PRESETS, TokenizerConfig, tokenizer_preset
from wm_video.tokenizer.model import TokenizerEncoding, TokenizerOutput, TokenizerStream, VideoTokenizer

__all__ = [
    "TOKENIZER_PRESETS",
    "TokenizerConfig",
    "TokenizerEncoding",
    "TokenizerOutput",
    "TokenizerStream",
    "VideoTokenizer",
    "tokenizer_preset",
]
