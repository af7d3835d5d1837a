"""The "What a player sees" tables of texture, distribution distance, revisits and the soak, and
the section's rows of the headline table (:mod:`.player_report` assembles the section)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from wm_video.eval.consistency import ConsistencyResult
from wm_video.eval.player_scores import EMPTY_SHARE
from wm_video.eval.texture import HIGH_FREQUENCY


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.0f} %"


def table_header(labels: list[str], references: tuple[str, ...]) -> list[str]:
    """A figure table's header: one column per checkpoint, then the references."""
    return [
        "| figure | " + " | ".join([*labels, *references]) + " |",
        "|---|" + "---|" * (len(labels) + len(references)),
    ]


def table_row(name: str, views: list[Any], cell: Any, references: Any) -> str:
    """A figure row: ``cell(view)`` per checkpoint (– where it has none), then the reference cells."""
    values = [cell(v) if v is not None else "–" for v in views]
    return f"| {name} | " + " | ".join([*values, *references]) + " |"


def texture_table(result: ConsistencyResult, labels: list[str]) -> list[str]:
    curves = [
        (r.model.label, r.player.texture) for r in result.results if r.player is not None and r.player.texture
    ]
    if not curves:
        return []
    steps = curves[0][1].steps
    lines = [
        "### Texture",
        "",
        f"Sharpness (mean |Laplacian|) and the share of spectral energy at ≥ {HIGH_FREQUENCY} cycles/px, as ratios: "
        "generated / real frames of the same clips and steps, and generated / the tokenizer's reconstructions of them. "
        + "; ".join(
            f"`{label}`'s tokenizer keeps {fmt(c.tokenizer_sharpness_vs_real)} of the real sharpness "
            f"({fmt(c.real_sharpness, 1)}) and {fmt(c.tokenizer_high_frequency_vs_real)} of the high frequencies"
            for label, c in curves
        )
        + ".",
        "",
        "| ratio at generated frame | " + " | ".join(str(t) for t in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for label, c in curves:
        for name, values in (
            ("sharpness / real", c.sharpness_vs_real),
            ("sharpness / tokenizer", c.sharpness_vs_tokenizer),
            ("high frequencies / real", c.high_frequency_vs_real),
            ("high frequencies / tokenizer", c.high_frequency_vs_tokenizer),
        ):
            lines.append(f"| {label}: {name} | " + " | ".join(fmt(v) for v in values) + " |")
    return [*lines, ""]


def frechet_table(result: ConsistencyResult, labels: list[str]) -> list[str]:
    values = [r.player.frechet if r.player else {} for r in result.results]
    if not any(values):
        return []
    first = next(v for v in values if v)
    sets = len(result.player.floor_features) if result.player else 0

    def spread(v: dict[str, float], name: str) -> str:
        return f"{fmt(v.get(name), 3)} ({fmt(v.get(f'{name} min'), 3)}–{fmt(v.get(f'{name} max'), 3)})"

    return [
        "### Distribution distance",
        "",
        "Fréchet distance between 4-frame windows of the drift clips (object-model features: mean and mean change) "
        f"and a set of as many real evaluation clips that share no frame with them: the mean over {sets} such sets "
        "(min–max). The floor: the drift clips' real frames against the same sets. 0 = the same set.",
        "",
        *table_header(labels, ("tokenizer reconstructions", "real (the floor)")),
        table_row(
            "Fréchet distance",
            values,
            lambda v: spread(v, "generated"),
            (spread(first, "tokenizer"), spread(first, "real")),
        ),
        "",
    ]


def revisits_table(result: ConsistencyResult, labels: list[str]) -> list[str]:
    scores = [r.player.revisits if r.player else None for r in result.results]
    if not any(scores):
        note = (
            "no revisit found in the evaluation episodes' poses"
            if result.player and not result.player.revisits
            else ""
        )
        return [f"### Places revisited\n\nNot measured: {note}.", ""] if note else []
    first = next(s for s in scores if s)
    return [
        "### Places revisited",
        "",
        f"{first.revisits} moments where the recorded player returns to within 24 map units and 10° of an earlier pose "
        f"after turning ≥ 90° or walking ≥ 128 units away ({min(first.gaps)}–{max(first.gaps)} frames later, median "
        f"{int(np.median(first.gaps))}). The model is driven from the earlier moment with the real actions between; "
        "its frame at the return is compared with the real one. The game's own floor: the real earlier frame against "
        "the real return (monsters move). HY-WorldPlay reports 18.94 dB on its own data.",
        "",
        *table_header(labels, ("the game itself",)),
        table_row("PSNR at the return (dB)", scores, lambda s: fmt(s.model_psnr), (fmt(first.floor_psnr),)),
        table_row("monster IoU at the return", scores, lambda s: fmt(s.model_iou), (fmt(first.floor_iou),)),
        "",
    ]


def soak_table(result: ConsistencyResult, labels: list[str]) -> list[str]:
    views = [(r.model.label, r.player) for r in result.results if r.player is not None and r.player.soak]
    setup = result.player
    if not views or setup is None:
        return []
    first = views[0][1]
    assert first.soak is not None
    head = "".join(f" {n} in view | {n} appearances |" for n in setup.classes)
    lines = [
        "### Soak, per 1,000 frames",
        "",
        f"The object model read 1 of every {result.config.player.soak_every} chunks of 256 soak frames "
        f"({first.soak.observed:,} frames). References: the evaluation footage (object model), and the same "
        f"footage through `{views[0][0]}`'s tokenizer.",
        "",
        f"| | frames from |{head} sharpness | high-frequency share |",
        "|---|---|" + "---|---|" * len(setup.classes) + "---|---|",
    ]
    real = "".join(
        f" {pct(setup.real_rates[n]['objects_presence'])} | {fmt(setup.real_rates[n]['objects_appearances_per_1000'], 1)} |"
        for n in setup.classes
    )
    rebuilt = "".join(
        f" {pct(first.tokenizer_footage.get(f'{n} presence'))} | {fmt(first.appearances.get(n, {}).get('tokenizer'), 1)} |"
        for n in setup.classes
    )
    lines.append(
        f"| real footage | – |{real} {fmt(setup.real_texture['sharpness'])} | {fmt(setup.real_texture['high_frequency'], 3)} |"
    )
    lines.append(
        f"| through the tokenizer | – |{rebuilt} {fmt(first.tokenizer_footage.get('sharpness'))} | "
        f"{fmt(first.tokenizer_footage.get('high_frequency'), 3)} |"
    )
    for label, view in views:
        soak = view.soak
        assert soak is not None
        for i, start in enumerate(soak.segments):
            cells = "".join(
                f" {pct(soak.presence[n][i])} | {fmt(soak.appearances_per_1000[n][i], 1)} |"
                for n in setup.classes
            )
            lines.append(
                f"| {label} | {start:,} |{cells} {fmt(soak.sharpness[i])} | {fmt(soak.high_frequency[i], 3)} |"
            )
    lines.append("")
    for label, view in views:
        assert view.soak is not None
        for n in setup.classes:
            emptied = view.soak.emptied(n, setup.real_rates[n]["objects_presence"])
            if emptied is not None:
                lines.append(
                    f"- **{label}: {n}s vanish** from frame {emptied:,}: in view in less than "
                    f"{100 * EMPTY_SHARE:.0f} % of the share of frames the real footage shows them in."
                )
    return [*lines, ""]


def player_headline(result: ConsistencyResult) -> list[str]:
    """Rows for the headline table (one column per checkpoint), with the reference in the row name."""
    rows: list[str] = []
    views = [r.player for r in result.results]
    if not any(views):
        return rows

    def row(name: str, cell: Any) -> None:
        rows.append(f"| {name} | " + " | ".join(cell(v) if v is not None else "–" for v in views) + " |")

    persisted = next(
        (v.persistence.get("monster") for v in views if v and v.persistence.get("monster")), None
    )
    if persisted is not None:
        row(
            f"monster still in view after {persisted.steps[-1]} generated frames (real footage: {pct(persisted.real[-1])})",
            lambda v: pct(v.persistence["monster"].generated[-1]) if "monster" in v.persistence else "–",
        )
    held = next((v.flash_held for v in views if v and v.flash_held), None)
    if held:
        engine = held["engine (labels)"]
        row(
            f"attack held {engine.frames} frames: flashes per start (engine: {fmt(engine.onsets_per_clip, 1)}, "
            f"every {fmt(engine.refire_period, 0)} frames)",
            lambda v: fmt(v.flash_held["model"].onsets_per_clip, 1) if v.flash_held else "–",
        )
    texture_curve = next((v.texture for v in views if v and v.texture), None)
    if texture_curve is not None:
        row(
            f"sharpness at generated frame {texture_curve.steps[-1]}, / real (tokenizer: "
            f"{fmt(texture_curve.tokenizer_sharpness_vs_real)})",
            lambda v: fmt(v.texture.sharpness_vs_real[-1]) if v.texture else "–",
        )
    frechet_values = next((v.frechet for v in views if v and v.frechet), None)
    if frechet_values:
        row(
            f"Fréchet distance (real floor {fmt(frechet_values['real'], 3)}, tokenizer "
            f"{fmt(frechet_values['tokenizer'], 3)})",
            lambda v: fmt(v.frechet.get("generated"), 3),
        )
    soak = next((v.soak for v in views if v and v.soak), None)
    if soak is not None and result.player is not None and "monster" in result.player.classes:
        real = result.player.real_rates["monster"]["objects_presence"]
        row(
            f"soak: monster in view, first → last 1,000 frames (real footage: {pct(real)})",
            lambda v: (
                f"{pct(v.soak.presence['monster'][0])} → {pct(v.soak.presence['monster'][-1])}"
                + (
                    f", emptied from frame {v.soak.emptied('monster', real):,}"
                    if v.soak.emptied("monster", real) is not None
                    else ""
                )
                if v.soak
                else "–"
            ),
        )
    revisit = next((v.revisits for v in views if v and v.revisits), None)
    if revisit is not None:
        row(
            f"revisit PSNR, {revisit.revisits} returns (the game itself: {fmt(revisit.floor_psnr)} dB)",
            lambda v: fmt(v.revisits.model_psnr) if v.revisits else "–",
        )
    return rows
