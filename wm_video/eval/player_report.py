"""The "What a player sees" section of ``report.md`` (the object model's sight, objects, shooting; the
other tables: :mod:`.player_tables`), its numbers for ``metrics.json`` and ``objects.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wm_video.eval.consistency import ConsistencyResult
from wm_video.eval.objects import CELL, predict
from wm_video.eval.player_tables import (
    fmt,
    frechet_table,
    pct,
    revisits_table,
    soak_table,
    table_header,
    table_row,
    texture_table,
)
from wm_video.eval.plots import save_grid
from wm_video.eval.presence import APPEARANCE_GAP, MIN_CELLS

#: Overlay colour per class id (background, monster, corpse, projectile, blood, item, weapon, flash, other).
COLOURS = np.array(
    [[0, 0, 0], [255, 0, 0], [128, 0, 128], [255, 255, 0], [120, 0, 0], [0, 255, 0], [0, 128, 255], [255, 255, 255], [255, 0, 255]],
    dtype=np.uint8,
)  # fmt: skip


def player_metrics(result: ConsistencyResult) -> dict[str, Any]:
    """The section's numbers for metrics.json (shared references and each checkpoint's figures)."""
    setup = result.player
    views = {r.model.label: r.player.to_dict() for r in result.results if r.player is not None}
    if setup is None:
        return {"skipped": result.player_skipped, "models": views}
    return {
        "skipped": None,
        "object_model": {
            "path": str(setup.objects.path),
            "reused": setup.objects.reused,
            "train_frames": setup.objects.train_frames,
            "classes": setup.classes,
            "sight_real": {k: v.to_dict() for k, v in setup.sight_real.items()},
            "tile_frames": setup.tile_frames,
        },
        "real_footage": setup.real_rates,
        "persistence_clips": len(setup.persistence_starts),
        "revisits": len(setup.revisits),
        "contaminated_episodes": result.contaminated,
        "notes": setup.notes,
        "models": views,
    }


def overlay(frames: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Frames (..., H, W, 3) with cell classes (..., H/2, W/2) drawn over them (60 % colour)."""
    full = cells.repeat(CELL, axis=-2).repeat(CELL, axis=-1)
    out = frames.copy()
    mask = full > 0
    out[mask] = (0.4 * frames[mask] + 0.6 * COLOURS[full[mask]]).astype(np.uint8)
    return out


def write_objects_sheet(result: ConsistencyResult, path: Path) -> Path | None:
    """objects.png: per clip shown in samples.mp4, at generated steps 1, 4, 16 and the last: the real
    frame, the object model on it, the generated frame, the object model on it."""
    setup = result.player
    if setup is None or not result.results or result.results[0].player is None:
        return None
    scores, clips = result.results[0].clips, result.clips
    steps = sorted({t for t in (1, 4, 16, scores.horizon) if t <= scores.horizon})
    shown = min(result.config.video_clips, clips.count)
    rows = []
    for b in range(shown):
        real = clips.frames[b, [setup.context + t - 1 for t in steps]]
        generated = scores.generated[b, [t - 1 for t in steps]]
        both = np.concatenate((real, generated))
        cells = predict(setup.objects, both).cells
        marked = overlay(both, cells)
        rows.append(
            np.stack([x for pair in zip(both[: len(steps)], marked[: len(steps)], strict=True) for x in pair])
        )
        rows.append(
            np.stack([x for pair in zip(both[len(steps) :], marked[len(steps) :], strict=True) for x in pair])
        )
    return save_grid(rows, path, scale=1)  # 64-px tiles: a committed report stays small


def _per_model(result: ConsistencyResult, cell: Any) -> list[str]:
    return [cell(r.player) if r.player is not None else "–" for r in result.results]


def player_markdown(result: ConsistencyResult, files: dict[str, str]) -> list[str]:
    """The section's lines (the first section of report.md)."""
    lines = ["## What a player sees", ""]
    setup = result.player
    labels = [r.model.label for r in result.results]
    if setup is None:
        lines += [
            f"Objects, shooting, the Fréchet distance and revisits were skipped: {result.player_skipped}.",
            "",
        ]
        lines += texture_table(result, labels)
        return lines
    objects = setup.objects
    lines += [
        f"Scored against the engine's ground truth. An object model ({'reused from' if objects.reused else 'cached in'} "
        f"`{objects.path}`), trained here on the {objects.train_frames:,} labelled frames of the training episodes, "
        f"classes every {CELL}×{CELL}-pixel cell; a class is *in view* when it covers at least "
        + ", ".join(f"{k} cell{'s' * (k > 1)} ({n})" for n, k in MIN_CELLS.items())
        + f". An *appearance* is a frame in view after {APPEARANCE_GAP} frames without. Real frames are judged by "
        "their labels (the truth) and by the object model (like for like); generated frames by the object model.",
        "",
    ]
    if result.contaminated:
        lines += [f"**Contaminated**: episodes {result.contaminated} trained the object model.", ""]
    lines += [
        "**What the object model sees** (precision / recall per cell, and for 'in view' per frame):",
        "",
    ]
    lines += [
        "| class | in view (labels) | real frames: cells | real frames: in view | "
        + " | ".join(f"`{label}`'s tokenizer: cells / in view" for label in labels)
        + " |"
    ]
    lines += ["|---|---|---|---|" + "---|" * len(labels)]
    for name, s in setup.sight_real.items():
        cells = [
            f"{fmt(r.player.sight_tokenizer[name].cell_precision)} / {fmt(r.player.sight_tokenizer[name].cell_recall)}; "
            f"{fmt(r.player.sight_tokenizer[name].frame_precision)} / {fmt(r.player.sight_tokenizer[name].frame_recall)}"
            if r.player is not None and name in r.player.sight_tokenizer
            else "–"
            for r in result.results
        ]
        lines.append(
            f"| {name} | {pct(s.label_rate)} of {s.frames:,} frames | {fmt(s.cell_precision)} / {fmt(s.cell_recall)} | "
            f"{fmt(s.frame_precision)} / {fmt(s.frame_recall)} | " + " | ".join(cells) + " |"
        )
    tiles = setup.tile_frames
    if tiles.get("frames"):
        sides = " or ".join(f"{t}×{t}" for t in sorted(objects.model.config.tiles))
        lines += [
            "",
            f"**Tile artefacts** (what a tokenizer's patches can draw where no monster is): on {tiles['frames']:,} "
            f"held-out frames the labels show no monster in, with grid-aligned {sides}-pixel tiles in monster and "
            "blood colours (single and in mosaics) pasted over the background, the object model calls a monster "
            f"in view in {pct(tiles['after'])} of them ({pct(tiles['before'])} before pasting). It learnt such tiles "
            f"as background in {pct(objects.model.config.tile_share)} of its training frames.",
        ]
    lines += ["", *_objects(result, labels), *_shooting(result, labels), *texture_table(result, labels)]
    lines += [*frechet_table(result, labels), *revisits_table(result, labels), *soak_table(result, labels)]
    if "objects" in files:
        lines += [
            f"![objects]({files['objects']})",
            "",
            "Real frame, object model on it, generated frame, object model on it (rows: real, then generated; steps 1, 4, 16 and the last).",
            "",
        ]
    if setup.notes:
        lines += [*[f"- {n}" for n in setup.notes], ""]
    return lines


OBJECT_REFERENCES = (
    "real footage: labels",
    "real footage: object model",
    "tokenizer reconstructions: object model",
)
SHOOTING_REFERENCES = (
    "engine (held) / real footage: labels",
    "… object model",
    "… through the tokenizer: object model",
)


def _objects(result: ConsistencyResult, labels: list[str]) -> list[str]:
    setup = result.player
    assert setup is not None
    views = [r.player for r in result.results]
    first = next(v for v in views if v is not None)
    lines = ["### Objects", "", *table_header(labels, OBJECT_REFERENCES)]

    def row(name: str, generated: Any, references: tuple[str, str, str]) -> None:
        lines.append(table_row(name, views, generated, references))

    for name in setup.classes:
        share = first.presence.get(name, {})
        row(
            f"{name} in view, share of the drift clips' frames",
            lambda v, n=name: pct(v.presence.get(n, {}).get("generated")),
            (
                pct(share.get("real (labels)")),
                pct(share.get("real (object model)")),
                pct(share.get("tokenizer")),
            ),
        )
        real = setup.real_rates[name]
        row(
            f"{name} appearances per 1,000 frames (rollouts; references: all the evaluation footage)",
            lambda v, n=name: fmt(v.appearances.get(n, {}).get("generated"), 1),
            (
                fmt(real["labels_appearances_per_1000"], 1),
                fmt(real["objects_appearances_per_1000"], 1),
                fmt(first.appearances.get(name, {}).get("tokenizer"), 1),
            ),
        )
        iou = first.teacher_iou.get(name)
        if iou:
            row(
                f"{name} mask IoU against the labels, teacher-forced frames",
                lambda v, n=name: fmt(v.teacher_iou[n]["generated"]) if n in v.teacher_iou else "–",
                ("1", fmt(iou["real"]), fmt(iou["tokenizer"])),
            )
    persisted = first.persistence.get("monster")
    if persisted is not None:
        steps = " / ".join(str(t) for t in persisted.steps)
        row(
            f"monster still in view after {steps} generated frames, of {persisted.clips} clips starting with one",
            lambda v: (
                " / ".join(pct(x) for x in v.persistence["monster"].generated) if v.persistence else "–"
            ),
            (
                " / ".join(pct(x) for x in persisted.real),
                "–",
                " / ".join(pct(x) for x in persisted.tokenizer),
            ),
        )
        row(
            "… of the clips where the game still shows one (1: keeps what the game keeps)",
            lambda v: " / ".join(fmt(x) for x in v.persistence["monster"].kept) if v.persistence else "–",
            ("1", "–", "–"),
        )
    return [*lines, ""]


def _shooting(result: ConsistencyResult, labels: list[str]) -> list[str]:
    views = [r.player for r in result.results]
    held = next((v.flash_held for v in views if v is not None and v.flash_held), None)
    actions = next((v.flash_real_actions for v in views if v is not None and v.flash_real_actions), None)
    if held is None and actions is None:
        return []
    lines = [
        "### Shooting",
        "",
        "The engine re-fires while attack is held; its muzzle flash shows for 2–3 frames each time.",
        "",
        *table_header(labels, SHOOTING_REFERENCES),
    ]

    def row(name: str, cell: Any, references: list[str]) -> None:
        lines.append(table_row(name, views, cell, references))

    if held is not None:
        keys = ("engine (labels)", "engine (object model)", "engine through the tokenizer")
        model = held["model"]
        for name, measure, digits in (
            (f"attack held {model.frames} frames from {model.clips} starts: flash rate", "flash_rate", -1),
            ("… flashes per start", "onsets_per_clip", 1),
            ("… re-fire period (median frames between flashes)", "refire_period", 1),
        ):

            def value(scores: Any, m: str = measure, d: int = digits) -> str:
                return pct(getattr(scores, m)) if d < 0 else fmt(getattr(scores, m), d)

            row(
                name,
                lambda v, f=value: f(v.flash_held["model"]) if v.flash_held else "–",
                [value(held[k]) for k in keys],
            )
    if actions is not None:
        reference = actions.get("real (labels)")
        row(
            "under the real actions (drift clips): flash rate",
            lambda v: pct(v.flash_real_actions["generated"].flash_rate) if v.flash_real_actions else "–",
            [
                pct(reference.flash_rate) if reference else "–",
                pct(actions["real (object model)"].flash_rate),
                pct(actions["tokenizer"].flash_rate),
            ],
        )
    return [*lines, ""]
