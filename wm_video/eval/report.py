"""The report folder of ``wm-video eval``: ``metrics.json``, plots, an mp4 and ``report.md``.

``report.md`` is what a person reads first: the headline numbers with the references that give
them meaning (the tokenizer's ceiling, the frozen-frame floor, the engine's own loop closure,
the IDM on real frames), then links to the plots. ``metrics.json`` holds every number, the
checkpoints' weight hashes, the dataset, the seed and the library versions.
"""

from __future__ import annotations

import math
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from wm_video.cli_args import counted
from wm_video.eval.consistency import ConsistencyResult, ModelResult
from wm_video.eval.idm import ActionScores
from wm_video.eval.player_report import player_markdown, player_metrics, write_objects_sheet
from wm_video.eval.player_tables import player_headline
from wm_video.eval.plots import plot_control, plot_drift, plot_soak, save_grid, write_side_by_side
from wm_video.eval.rollouts import PSNR_CAP_DB
from wm_video.fileio import atomic_write_json, atomic_write_text


def versions() -> dict[str, str]:
    import numpy
    import torch

    import wm_video

    return {
        "wm_video": wm_video.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def finite_json(value: Any) -> Any:
    """JSON has no NaN/inf: replace them by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def metrics_dict(result: ConsistencyResult) -> dict[str, Any]:
    config = result.config
    models = {}
    for r in result.results:
        m = r.model
        models[m.label] = {
            "checkpoint": str(m.path),
            "step": m.step,
            "weights_sha256": m.weights_sha256,
            "sampling": m.dynamics.sampling,
            "tokenizer": m.tokenizer_path,
            **r.clips.to_dict(),
            "action_accuracy": {k: v.to_dict() for k, v in r.actions.items()},
            "loop_closure": r.loops.to_dict() if r.loops else None,
            "soak": r.soak.to_dict() if r.soak else None,
            "seconds": r.seconds,
        }
    return finite_json(
        {
            "data": str(result.data),
            "fps": result.fps,
            "clips_from": result.clips.origin,
            "clip_episodes": result.clips.episodes.tolist(),
            "clip_starts": result.clips.starts.tolist(),
            "seed": config.seed,
            "config": {
                k: (sorted(v) if isinstance(v, frozenset) else v)
                for k, v in asdict(config).items()
                if k not in ("idm", "loops", "idm_cache")
            }
            | {"idm": asdict(config.idm), "loops": asdict(config.loops)},
            "models": models,
            "idm": None
            if result.idm is None
            else {
                "path": str(result.idm.path),
                "reused": result.idm.reused,
                "train_pairs": result.idm.train_pairs,
                "buttons": list(result.idm.buttons),
                "varying": [result.idm.buttons[i] for i in result.idm.varying],
                "readable": result.readable_buttons,
                "real_heldout": result.idm_heldout.to_dict() if result.idm_heldout else None,
            },
            "soak_reference": result.reference.to_dict() if result.reference else None,
            "soak_real_footage": result.extra.get("footage_collapse"),
            "player": player_metrics(result),
            "notes": result.notes,
            "incomplete": result.incomplete,
            "seconds": result.seconds,
            "versions": versions(),
        }
    )


def _f(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def _at(curve: list[float], t: int) -> float:
    return curve[min(t, len(curve)) - 1]


def _marks(horizon: int, fps: float) -> list[int]:
    marks = sorted({t for t in (1, 4, 8, 16, 32, round(fps), round(2 * fps), horizon) if 1 <= t <= horizon})
    return marks


def _headline(results: list[ModelResult], fps: float, contaminated: bool = False) -> list[str]:
    labels = [r.model.label for r in results]
    horizon = results[0].clips.horizon
    rows = [
        "| | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]

    def row(name: str, values: list[str]) -> None:
        rows.append(f"| {name} | " + " | ".join(values) + " |")

    row("teacher-forced next frame PSNR (dB)", [_f(r.clips.teacher.psnr) for r in results])
    row("teacher-forced next frame SSIM", [_f(r.clips.teacher.ssim, 3) for r in results])
    row(
        f"PSNR after {horizon / fps:.1f} s ({horizon} frames) (dB)",
        [
            f"{_f(_at(r.clips.drift.psnr.mean, horizon))} ± {_f(_at(r.clips.drift.psnr.std, horizon))}"
            for r in results
        ],
    )
    row(f"ΔPSNR(t={results[0].clips.control.t}) (dB)", [_f(r.clips.control.delta_psnr_t4) for r in results])
    if all("rollout" in r.actions for r in results):
        row(
            "IDM mean F1 over readable buttons: rollout / real frames of the same clips"
            + (" (CONTAMINATED: the IDM trained on these episodes)" if contaminated else ""),
            [
                f"{_f(r.actions['rollout'].readable_mean_f1, 3)} / {_f(r.actions['real clips'].readable_mean_f1, 3)}"
                for r in results
            ],
        )
    for name in results[0].loops.programs if results[0].loops else []:
        row(
            f"loop '{name}': final vs start PSNR, model / engine (dB)",
            [
                f"{_f(r.loops.programs[name].model_psnr)} / {_f(r.loops.programs[name].engine_psnr)}"
                if r.loops
                else "–"
                for r in results
            ],
        )
    if all(r.soak for r in results):
        row(
            "soak: first collapse (frame, kind)",
            [
                f"{r.soak.first_collapse} ({r.soak.first_kind})" if r.soak and r.soak.first_kind else "none"
                for r in results
            ],
        )
    return rows


def _action_table(scores: dict[str, ActionScores], heldout: ActionScores | None) -> list[str]:
    named = dict(scores)
    if heldout is not None:
        named = {"real held-out pairs": heldout, **named}
    buttons = list(next(iter(named.values())).f1) if named else []
    rows = [
        "| frame pairs | pairs | mean F1, readable | mean F1, all | all buttons right | "
        + " | ".join(f"F1 {b}" for b in buttons)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(buttons),
    ]
    for name, s in named.items():
        rows.append(
            f"| {name} | {s.pairs} | {_f(s.readable_mean_f1, 3)} | {_f(s.mean_f1, 3)} | {_f(s.exact, 3)} | "
            + " | ".join(_f(s.f1.get(b), 2) for b in buttons)
            + " |"
        )
    return rows



def _sampling_text(sampling: dict[str, Any]) -> str:
    """``temperature 1, top-k all, passes model's`` (and ``, guidance 2``, ``, order certain`` when not the
    defaults) from a world's sampling settings."""
    top_k, passes, guidance = sampling.get("top_k"), sampling.get("passes"), sampling.get("guidance", 1.0)
    order = sampling.get("order", "drawn")
    return (
        f"temperature {sampling.get('temperature', 1.0):g}, top-k {top_k or 'all'}, "
        f"passes {passes or 'the model’s'}"
        + (f", guidance {guidance:g}" if guidance != 1.0 else "")
        + (f", order {order}" if order != "drawn" else "")
    )

def render_markdown(result: ConsistencyResult, files: dict[str, str]) -> str:
    first = result.results[0]
    fps, horizon, context = result.fps, first.clips.horizon, first.clips.context
    lines = [
        f"# Consistency report: {first.model.path}",
        "",
        *(
            [
                f"**Incomplete**: the run was stopped during {result.incomplete}; what follows is what had "
                "finished (the parts it did not reach say 'Not measured' or 'Not run').",
                "",
            ]
            if result.incomplete
            else []
        ),
        f"- checkpoint: `{first.model.path}` (step {first.model.step}, weights sha256 `{first.model.weights_sha256[:16]}…`; "
        f"sampling {_sampling_text(first.model.dynamics.sampling)})",
    ]
    for r in result.results[1:]:
        lines.append(
            f"- baseline: `{r.model.path}` (step {r.model.step}, weights sha256 `{r.model.weights_sha256[:16]}…`; "
            f"sampling {_sampling_text(r.model.dynamics.sampling)})"
        )
    lines += [
        f"- clips: {result.clips.count} from {result.clips.origin}; {context} real context frames, then "
        f"{horizon} generated ({horizon / fps:.1f} s at {fps:g} fps)",
        f"- seed {result.config.seed}; the whole run took {result.seconds:.0f} s",
        "",
        "PSNR is the per-frame mean in dB on uint8 frames (capped at 100 dB); SSIM per Wang et al. 2004.",
        "",
        *player_markdown(result, files),
        "## Headline",
        "",
        *_headline(result.results, fps, bool(result.contaminated)),
        *player_headline(result),
        "",
        "## Next frame, teacher-forced",
        "",
        "Every frame generated from the real frames before it and the real action; decoded after the real codes. "
        f"Repeated, a frame equal to the one before scores {PSNR_CAP_DB:.0f} dB (in brackets: the share of such "
        "frames). 'Tokenized': the last frame encoded again and decoded, what a world holding it still shows. "
        "Bits per token: −log2 of the probability the model gives each real token, the whole frame masked "
        f"(a uniform guess: {math.log2(result.results[0].model.dynamics.config.codebook_size):.1f}); 'changed': "
        "the tokens whose code differs from the frame before.",
        "",
        "| | PSNR (dB) | SSIM | token accuracy | bits per token: all / changed codes | tokenizer ceiling (dB) "
        "| repeat last frame (dB) | repeat, tokenized (dB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.results:
        t = r.clips.teacher
        lines.append(
            f"| {r.model.label} | {_f(t.psnr)} | {_f(t.ssim, 3)} | {100 * t.token_accuracy:.1f} % | "
            f"{_f(t.code_bits)} / {_f(t.changed_code_bits)} ({100 * t.changed_tokens:.0f} % changed) | "
            f"{_f(t.tokenizer_psnr)} | {_f(t.repeat_psnr)} ({100 * t.unchanged:.0f} % unchanged) | "
            f"{_f(t.tokenized_repeat_psnr)} |"
        )
    marks = _marks(horizon, fps)
    lines += [
        "",
        "## Drift",
        "",
        f"![drift]({files['drift']})",
        "",
        "PSNR (dB) under the real actions, mean ± std over clips; 'held': the last real context frame held still.",
        "",
        "| frame | " + " | ".join(str(t) for t in marks) + " |",
        "|---|" + "---|" * len(marks),
    ]
    for r in result.results:
        d = r.clips.drift
        lines.append(
            f"| {r.model.label} | "
            + " | ".join(f"{_f(_at(d.psnr.mean, t))} ± {_f(_at(d.psnr.std, t), 1)}" for t in marks)
            + " |"
        )
        lines.append(
            f"| {r.model.label} SSIM | " + " | ".join(_f(_at(d.ssim.mean, t), 3) for t in marks) + " |"
        )
        lines.append(
            f"| {r.model.label} clips, held | "
            + " | ".join(_f(_at(d.held_psnr.mean, t)) for t in marks)
            + " |"
        )
    lines += [
        "",
        "## Controllability",
        "",
        f"![controllability]({files['control']})",
        "",
        "ΔPSNR(t) = PSNR with the real actions − PSNR with random actions (drawn from the data), same context "
        "and seed (Genie reports 1.3–2.1 dB at t = 4). Near 0: the model ignores its actions.",
        "",
        "| frame | " + " | ".join(str(t) for t in marks) + " |",
        "|---|" + "---|" * len(marks),
    ]
    for r in result.results:
        lines.append(
            f"| {r.model.label} | " + " | ".join(_f(_at(r.clips.control.delta_psnr, t)) for t in marks) + " |"
        )
    lines += ["", "## Action accuracy (inverse dynamics)", ""]
    if result.contaminated and result.idm is not None:
        lines += [
            f"**CONTAMINATED**: episodes {result.contaminated} are training episodes of this dataset; the IDM "
            "trained on their frames, so its scores on real frames below are inflated.",
            "",
        ]
    if result.idm is None:
        lines.append("Not measured.")
    else:
        idm = result.idm
        lines += [
            f"A small inverse-dynamics model trained on {idm.train_pairs} real consecutive frame pairs of the "
            f"training episodes ({'reused from' if idm.reused else 'cached in'} `{idm.path}`) predicts the "
            f"buttons held between two frames. Scored over the buttons that vary in the data: "
            f"{', '.join(idm.buttons[i] for i in idm.varying) or 'none'}. If the model obeys its actions, "
            "the IDM reads them from generated frames about as well as from real ones. 'Readable' buttons are "
            f"those it finds with F1 ≥ 0.5 on real pairs: {', '.join(result.readable_buttons) or 'none'}; "
            "the others barely change the frames (e.g. 'use' on nothing) and only add chance-level noise.",
            "",
        ]
        for r in result.results:
            lines += [f"**{r.model.label}**", "", *_action_table(r.actions, result.idm_heldout), ""]
    lines += ["## Loop closure", ""]
    if first.loops is None:
        lines.append("Not measured" + ("." if not result.notes else f": {'; '.join(result.notes)}."))
    else:
        lines += [
            f"From {first.loops.starts} real starts on {first.loops.engine} (one full turn measured as "
            f"{first.loops.circle_steps} steps): similarity of the final frame to the start frame.",
            "",
            f"![loops]({files['loops']})",
            "",
            "Rows per program and start (model, then baseline): start | engine's final | model's final.",
            "",
            "| program | steps | | engine PSNR / SSIM | model PSNR / SSIM | model vs engine PSNR |",
            "|---|---|---|---|---|---|",
        ]
        for r in result.results:
            for name, p in r.loops.programs.items() if r.loops else []:
                lines.append(
                    f"| {name} | {p.steps} | {r.model.label} | {_f(p.engine_psnr)} / {_f(p.engine_ssim, 3)} | "
                    f"{_f(p.model_psnr)} / {_f(p.model_ssim, 3)} | {_f(p.model_vs_engine_psnr)} |"
                )
    lines += ["", "## Soak", ""]
    if first.soak is None or result.reference is None:
        lines.append("Not run.")
    else:
        stopped = f" (stopped after {first.soak.steps} of {first.soak.planned})" if first.soak.planned > first.soak.steps else ""
        lines += [
            f"{first.soak.steps} frames{stopped} under the exploration policy, which reads the model's own frames. "
            f"Collapse = a rolling median over {first.soak.window} frames leaving the real data's range "
            "(blur, noise, palette drift) or a window without change (freeze).",
            "",
            f"![soak]({files['soak']})",
            "",
            f"Snapshots: ![snapshots]({files['snapshots']})",
            "",
            "First frame of each kind of collapse (– where none):",
            "",
            "| | blur | noise | palette | freeze |",
            "|---|---|---|---|---|",
        ]
        kinds = ("blur", "noise", "palette", "freeze")
        for r in result.results:
            if r.soak is not None:
                c = r.soak.collapse
                lines.append(
                    f"| {r.model.label} | "
                    + " | ".join("–" if c[k] is None else str(c[k]) for k in kinds)
                    + " |"
                )
        footage = result.extra.get("footage_collapse") or {}
        for key, what in (
            ("flagged", "real held-out footage"),
            ("tokenizer_flagged", "the same, through the model's tokenizer"),
        ):
            if key in footage:
                lines.append(
                    f"| {what} ({counted(footage['episodes'], 'episode')}): episodes flagged | "
                    + " | ".join(str(footage[key][k]) for k in kinds)
                    + " |"
                )
        labels = [r.model.label for r in result.results if r.soak is not None]
        rebuilt = footage.get("tokenizer_percentiles")
        lines += [
            "",
            "Frame statistics: the real data's 1st / 50th / 99th percentile"
            + (
                ", the same for the held-out footage reconstructed by the model's tokenizer (the best a rollout "
                "decoded through it can look)"
                if rebuilt
                else ""
            )
            + ", and each model's mean over the first → last 10 % of the soak.",
            "",
            "| statistic | data | " + ("tokenizer | " if rebuilt else "") + " | ".join(labels) + " |",
            "|---|---|" + ("---|" if rebuilt else "") + "---|" * len(labels),
        ]
        for name in ("sharpness", "spread", "mean", "histogram_distance", "change"):
            columns = [result.reference.percentiles[name], *([rebuilt[name]] if rebuilt else [])]
            cells = [" / ".join(_f(v) for v in column) for column in columns] + [
                f"{_f(r.soak.summary[name]['first_10pct'])} → {_f(r.soak.summary[name]['last_10pct'])}"
                for r in result.results
                if r.soak is not None
            ]
            lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Files",
        "",
        *[f"- `{name}`" for name in sorted(set(files.values()))],
        "- `metrics.json`: every number",
        "",
    ]
    if result.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in result.notes], ""]
    return "\n".join(lines)


def write_report(result: ConsistencyResult, out: Path) -> Path:
    """Write the report folder; returns the path of report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scores = {r.model.label: r.clips for r in result.results}
    files = {"drift": "drift.png", "control": "controllability.png"}
    plot_drift(scores, result.fps, out / files["drift"])
    plot_control(scores, out / files["control"])
    shown = min(result.config.video_clips, result.clips.count)
    real = result.clips.frames[:shown, result.results[0].clips.context :]
    for r in result.results:
        name = "samples.mp4" if r.model.label == "model" else f"samples_{r.model.label}.mp4"
        write_side_by_side(real, r.clips.generated[:shown], result.fps, out / name)
        files[f"video_{r.model.label}"] = name
    loops = [r.loops for r in result.results if r.loops]
    if loops:
        rows = [
            f for report in loops for frames in report.frames.values() for f in frames
        ]  # (3, H, W, 3) each
        files["loops"] = "loops.png"
        save_grid(rows, out / files["loops"])
    soaks = {r.model.label: r.soak for r in result.results if r.soak}
    if soaks and result.reference is not None:
        files["soak"] = "soak.png"
        plot_soak(soaks, result.reference, out / files["soak"])
        rows = [np.stack([s.snapshots[k] for k in sorted(s.snapshots)]) for s in soaks.values()]
        files["snapshots"] = "soak_snapshots.png"
        save_grid(rows, out / files["snapshots"])
    if write_objects_sheet(result, out / "objects.png") is not None:
        files["objects"] = "objects.png"
    atomic_write_json(out / "metrics.json", metrics_dict(result) | {"files": files})
    atomic_write_text(out / "report.md", render_markdown(result, files))
    return out / "report.md"
