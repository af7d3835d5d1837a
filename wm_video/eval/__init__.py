"""Headless evaluation of the models on held-out footage (no pygame, no training loop).

The names below load on first use, so that ``wm_video.eval.cli`` (and ``wm-video --help``) does not
import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wm_video.eval.tokenizer import TokenizerReport, evaluate_tokenizer


def __getattr__(name: str) -> Any:
    if name in ("TokenizerReport", "evaluate_tokenizer"):
        from wm_video.eval import tokenizer

        return getattr(tokenizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TokenizerReport", "evaluate_tokenizer"]
