"""Game sources: real engines behind one reset/step interface, chosen by name.

Engine modules (vizdoom, ale-py) are imported only inside :func:`make_source`, so importing
``wm_video.sources`` stays cheap and works where an engine is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from wm_video.errors import InputError
from wm_video.sources.base import Source, StepResult

DEFAULT_SOURCE = "vizdoom"
DEFAULT_SCENARIO = "my_way_home"
#: The game an Atari source plays when no scenario is named.
DEFAULT_ATARI_GAME = "Breakout"


def _check_fields(name: str, config_class: type, kwargs: dict[str, Any], named: set[str]) -> None:
    allowed = sorted({field.name for field in fields(config_class)} - named)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise InputError(f"source {name!r} has no option {unknown}; its options are {allowed}")


def _make_vizdoom(scenario: str | None, size: int, frame_skip: int | None, **kwargs: Any) -> Source:
    from wm_video.sources.vizdoom import VizDoomConfig, VizDoomSource

    _check_fields("vizdoom", VizDoomConfig, kwargs, {"scenario", "size", "frame_skip"})
    config = VizDoomConfig(
        scenario=scenario or DEFAULT_SCENARIO, size=size, frame_skip=frame_skip or 2, **kwargs
    )
    return VizDoomSource(config)


def _make_atari(scenario: str | None, size: int, frame_skip: int | None, **kwargs: Any) -> Source:
    from wm_video.sources.atari import AtariConfig, AtariSource

    _check_fields("atari", AtariConfig, kwargs, {"game", "size", "frameskip"})
    config = AtariConfig(game=scenario or DEFAULT_ATARI_GAME, size=size, frameskip=frame_skip or 4, **kwargs)
    return AtariSource(config)


#: Sources that record the engine's ground truth (their config has ``ground_truth``).
TRUTH_SOURCES = frozenset({"vizdoom"})

#: Source name → factory(scenario, size, frame_skip, **config fields).
SOURCES: dict[str, Callable[..., Source]] = {"vizdoom": _make_vizdoom, "atari": _make_atari}


def make_source(
    name: str, *, scenario: str | None = None, size: int = 64, frame_skip: int | None = None, **kwargs: Any
) -> Source:
    """Start the engine ``name`` ("vizdoom" or "atari").

    ``scenario`` is a ViZDoom scenario or Freedoom map ("my_way_home", "freedoom1:E1M1") or an
    Atari game ("Breakout"); None picks the default. ``frame_skip`` None picks the source's
    default (ViZDoom 2 → 17.5 fps, Atari 4 → 15 fps). Other keyword arguments are fields of
    the source's config (``render_hud=True``, ``episode_timeout=...``, ``repeat_action_probability=...``).
    """
    if name not in SOURCES:
        raise InputError(f"unknown source {name!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[name](scenario, size, frame_skip, **kwargs)


__all__ = [
    "DEFAULT_SCENARIO",
    "DEFAULT_SOURCE",
    "SOURCES",
    "TRUTH_SOURCES",
    "Source",
    "StepResult",
    "make_source",
]
