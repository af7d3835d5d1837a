"""Headless evaluation of the models on held-out footage (no pygame, no training loop)."""

from wm_video.eval.tokenizer import TokenizerReport, evaluate_tokenizer

__all__ = ["TokenizerReport", "evaluate_tokenizer"]
