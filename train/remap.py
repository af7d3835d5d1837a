"""Carry a dynamics model's weights over to another action set, matching actions by name.

Only the first layer of the action MLP (``action_embed.0.weight``, one column per action) depends
on the action set. A column moves to the new model when an action of the same name and kind
(button or delta) exists there; a delta's column is also rescaled by new_scale / old_scale, so the
model reads the same movement the same way. Actions new to the model start with a zero column (no
effect until fine-tuning teaches one); actions the new data lacks are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wm_video.dynamics import DynamicsConfig

ACTION_WEIGHT = "action_embed.0.weight"  # (dim, A): the only weight whose shape depends on the actions


@dataclass(frozen=True)
class ActionMapping:
    kept: tuple[str, ...]  # actions whose embedding column was carried over
    new: tuple[str, ...]  # actions that start from zero
    dropped: tuple[str, ...]  # actions of the old model the new data does not have

    def describe(self) -> str:
        def names(group: tuple[str, ...]) -> str:
            return ", ".join(group) if group else "none"

        return f"actions kept: {names(self.kept)}; new: {names(self.new)}; dropped: {names(self.dropped)}"


def _kinds(config: DynamicsConfig) -> dict[str, tuple[int, str, float]]:
    """name → (column, "button" or "delta", scale)."""
    return {
        name: (i, "button" if i < config.action_buttons else "delta", config.scales[i])
        for i, name in enumerate(config.action_names)
    }


def remap_action_weights(
    weights: dict[str, Tensor], source: DynamicsConfig, target: DynamicsConfig
) -> tuple[dict[str, Tensor], ActionMapping]:
    """``weights`` of a ``source`` model, fitted to a ``target`` model that differs in its actions."""
    old, new = _kinds(source), _kinds(target)
    matrix = weights[ACTION_WEIGHT]  # (dim, A_source)
    remapped = torch.zeros(matrix.shape[0], target.action_dim, dtype=matrix.dtype)  # (dim, A_target)
    kept, fresh = [], []
    for name, (column, kind, scale) in new.items():
        if name in old and old[name][1] == kind:
            remapped[:, column] = matrix[:, old[name][0]] * (scale / old[name][2])
            kept.append(name)
        else:
            fresh.append(name)
    dropped = tuple(name for name in source.action_names if name not in kept)
    return {**weights, ACTION_WEIGHT: remapped}, ActionMapping(tuple(kept), tuple(fresh), dropped)
