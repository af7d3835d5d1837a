"""The options every training program shares, and their command-line flags.

Kept free of torch and Accelerate so that ``wm-video --help`` and the subcommand parsers stay
instant; :mod:`wm_video.train.session` runs a session from these options.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from pathlib import Path

from wm_video.cli_args import (
    add_cache_dir_flag,
    add_progress_flag,
    add_threads_flag,
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from wm_video.errors import InputError
from wm_video.fileio import check_output_folder

PRECISIONS = ("auto", "no", "bf16", "fp16")
REPORT_TO = ("none", "wandb")


@dataclass(frozen=True)
class SessionOptions:
    out: Path
    max_steps: int = 20_000
    max_minutes: float | None = None
    batch_size: int = 8  # clips per process per step
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_accum: int = 1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    mixed_precision: str = "auto"
    cpu: bool = False
    compile: bool = False  # torch.compile the training step (forward and loss; backward follows)
    log_every: int = 10
    eval_every: int = 250
    save_every: int = 1000
    keep: int = 3
    report_to: str = "none"
    wandb_project: str = "wm-video"
    progress: bool = True
    rank_timeout: float = 300.0  # seconds another process may stay silent before the run stops
    cache_dir: Path | None = None  # training caches under it (None: beside the data, or $WM_VIDEO_CACHE_DIR)
    threads: int | None = None  # torch CPU threads; None: chosen by timing (wm_video/threads.py)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``min_lr_ratio`` × lr at ``max_steps``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (
            self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        )


def add_session_flags(
    parser: argparse.ArgumentParser, defaults: SessionOptions, *, with_max_steps: bool = True
) -> None:
    """The flags every training program shares, grouped by topic, with ``defaults`` shown
    (``with_max_steps=False`` for a program that sets the steps of its phases itself)."""
    d = defaults
    run = parser.add_argument_group("run")
    run.add_argument(
        "--out", type=Path, required=True, help="run folder; an existing run resumes from its last checkpoint"
    )
    if with_max_steps:
        run.add_argument(
            "--max-steps",
            type=int,
            default=d.max_steps,
            help=f"optimizer steps in all (default {d.max_steps})",
        )
    run.add_argument(
        "--max-minutes", type=positive_float, default=None, help="stop (and save) after this much wall time"
    )
    run.add_argument("--seed", type=int, default=d.seed, help=f"model init and clip order (default {d.seed})")
    run.add_argument(
        "--save-every",
        type=int,
        default=d.save_every,
        help=f"steps between checkpoints (default {d.save_every})",
    )
    run.add_argument("--keep", type=int, default=d.keep, help=f"checkpoints kept (default {d.keep})")
    add_cache_dir_flag(run)
    run.add_argument(
        "--log-every",
        type=int,
        default=d.log_every,
        help=f"steps between log lines; Ctrl-C, SIGTERM and --max-minutes are checked there too (default {d.log_every})",
    )
    run.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help=f"steps between held-out checks, and at the end; 0: none (default {d.eval_every})",
    )
    opt = parser.add_argument_group("optimisation")
    opt.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"clips per process per step (default {d.batch_size})",
    )
    opt.add_argument(
        "--lr", type=positive_float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr})"
    )
    opt.add_argument(
        "--warmup-steps", type=int, default=d.warmup_steps, help=f"linear warm-up (default {d.warmup_steps})"
    )
    opt.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=d.weight_decay,
        help=f"AdamW weight decay of matrix and embedding weights; biases, norms and positions have none (default {d.weight_decay})",
    )
    opt.add_argument(
        "--grad-accum",
        type=int,
        default=d.grad_accum,
        help="batches accumulated per optimizer step (default 1)",
    )
    opt.add_argument(
        "--grad-clip",
        type=positive_float,
        default=d.grad_clip,
        help=f"gradient norm clip (default {d.grad_clip})",
    )
    opt.add_argument(
        "--ema-decay",
        type=finite_float,
        default=d.ema_decay,
        help=f"EMA of weights for evaluation (default {d.ema_decay})",
    )
    hw = parser.add_argument_group("hardware")
    hw.add_argument(
        "--mixed-precision",
        choices=PRECISIONS,
        default=d.mixed_precision,
        help="auto: bf16 on GPUs and on CPUs with AMX, fp32 on other CPUs (default auto)",
    )
    hw.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    hw.add_argument(
        "--compile",
        action="store_true",
        help="compile the training step with torch.compile (minutes to compile; faster steps on a GPU)",
    )
    hw.add_argument(
        "--rank-timeout",
        type=positive_float,
        default=d.rank_timeout,
        help="several processes: stop the run when one has not answered for this many seconds "
        f"(frozen or dead), naming it (default {d.rank_timeout:g})",
    )
    add_threads_flag(hw)
    log = parser.add_argument_group("logging")
    log.add_argument(
        "--report-to", choices=REPORT_TO, default=d.report_to, help="also log to wandb (WANDB_MODE honoured)"
    )
    log.add_argument(
        "--wandb-project", default=d.wandb_project, help=f"wandb project (default {d.wandb_project})"
    )
    add_progress_flag(log)


def session_options(args: argparse.Namespace) -> SessionOptions:
    """The :class:`SessionOptions` of parsed :func:`add_session_flags` flags, checked."""
    values = {f.name: getattr(args, f.name) for f in fields(SessionOptions) if hasattr(args, f.name)}
    options = SessionOptions(**values, progress=not args.no_progress)
    check_session_options(options)
    return options


def check_session_options(o: SessionOptions) -> None:
    """Every option in its range (NaN and inf are in none: ``nan <= 0`` is False, so each range is
    checked as ``low <= value <= high``, which NaN fails), and ``out`` usable as a run folder."""
    for name in ("max_steps", "batch_size", "grad_accum", "log_every", "save_every", "keep"):
        if getattr(o, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(o, name)}")
    if o.eval_every < 0:
        raise InputError(f"--eval-every must be ≥ 0 (0: no held-out checks), got {o.eval_every}")
    if o.warmup_steps < 0:
        raise InputError(f"--warmup-steps must be ≥ 0, got {o.warmup_steps}")
    inf = math.inf
    ranges: dict[str, tuple[float, float, bool]] = {  # (low, high, low excluded)
        "lr": (0.0, inf, True),
        "grad_clip": (0.0, inf, True),
        "weight_decay": (0.0, inf, False),
        "min_lr_ratio": (0.0, 1.0, False),
        "ema_decay": (0.0, 1.0, True),
        "rank_timeout": (0.0, inf, True),
    }
    if o.max_minutes is not None:
        ranges["max_minutes"] = (0.0, inf, True)
    for name, (low, high, open_low) in ranges.items():
        value = getattr(o, name)
        if not (math.isfinite(value) and low <= value <= high and not (open_low and value == low)):
            bound = f"> {low:g}" if open_low else f"≥ {low:g}"
            limit = f" and ≤ {high:g}" if high < inf else ""
            raise InputError(
                f"--{name.replace('_', '-')} must be a finite number {bound}{limit}, got {value}"
            )
    check_output_folder(o.out, "--out (the run folder)")


CHANGE_REFERENCES = ("previous", "median")  # as wm_video.tokenizer.loss.CHANGE_REFERENCES (kept torch-free here)


def add_change_flags(group: argparse._ActionsContainer, default_weight: float = 0.0) -> None:
    """The tokenizer-loss flags that weight the pixels where frames change (small moving objects)."""
    group.add_argument(
        "--change-weight",
        type=non_negative_float,
        default=default_weight,
        help="extra reconstruction-loss weight on pixels that differ from --change-reference, so small "
        f"moving objects (a ball, a paddle) are kept; 0: a plain mean over pixels (default {default_weight:g})",
    )
    group.add_argument(
        "--change-reference",
        choices=CHANGE_REFERENCES,
        default="previous",
        help="what a changed pixel differs from: the previous frame, or the training frames' median "
        "(the static background of a fixed-camera game) (default previous)",
    )


def add_init_flag(group: argparse._ActionsContainer, kind: str) -> None:
    """``--init``: start a run from another run's (or an exported world's) weights instead of at random."""
    group.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help=f"start from this {kind} run folder or checkpoint (its shape and EMA weights; the optimizer "
        "starts fresh): fine-tuning an existing world on new data or with a new loss; a run that "
        "already has a checkpoint in --out resumes that instead",
    )


def add_code_embedding_flag(group: argparse._ActionsContainer) -> None:
    """``--code-embedding``: the tokenizer's decoder reads a learned vector per code (wm_video.tokenizer.model)."""
    group.add_argument(
        "--code-embedding",
        action="store_true",
        help="give the tokenizer's decoder a learned vector per code (codes × width parameters: 0.8 M for "
        "tiny), so a rare code (a ball a pixel wide, a far monster) decodes to its own detail rather than a "
        "dim blend of similar codes; a tokenizer from --init without one gets one that starts at zero (it "
        "decodes as before, then learns with the rest of the tokenizer)",
    )


OBJECT_WEIGHT_HELP = (
    "needs a dataset with the engine's labels (ViZDoom, collected with ground truth); objects are "
    "monsters, corpses, projectiles, blood and the muzzle flash"
)


def add_chain_digits_flag(group: argparse._ActionsContainer) -> None:
    """``--chain-digits``: the dynamics model draws a token's digits in turn (wm_video.dynamics.model)."""
    group.add_argument(
        "--chain-digits",
        action="store_true",
        help="draw each token's FSQ digits in turn, each given those before it (a small layer, run C − 1 "
        "times per pass), so a token is a code the model means rather than a mix of two codes' digits: "
        "where it hesitates between a monster and the floor it draws one or the other, not a tile of "
        "neither; an --init model without the chain gets one that starts at zero (it predicts as before, "
        "then learns), and one with a chain keeps it with or without this flag",
    )


def add_token_weight_flags(group: argparse._ActionsContainer) -> None:
    """The dynamics-loss flags that weight the tokens where the game happens (wm_video.dynamics.objective)."""
    group.add_argument(
        "--object-weight",
        type=non_negative_float,
        default=0.0,
        help="extra token-loss weight on tokens whose patch holds an object pixel: each weighs "
        f"1 + W, the weights normalised to mean 1; {OBJECT_WEIGHT_HELP}; 0: none (default 0)",
    )
    group.add_argument(
        "--token-change-weight",
        type=non_negative_float,
        default=0.0,
        help="extra token-loss weight on tokens whose code differs from the same place in the frame "
        "before (what moved, appeared or vanished; needs no labels); 0: none (default 0)",
    )


def add_object_weight_flag(group: argparse._ActionsContainer, flag: str = "--object-weight") -> None:
    """The tokenizer-loss flag that weights the pixels of objects (wm_video.tokenizer.loss)."""
    group.add_argument(
        flag,
        dest="tokenizer_object_weight",
        type=non_negative_float,
        default=0.0,
        help="extra reconstruction-loss weight on object pixels (widened by a pixel): each weighs "
        f"1 + W, with --change-weight's on top, normalised to mean 1; {OBJECT_WEIGHT_HELP}; "
        "0: none (default 0)",
    )


def add_sharpness_flags(group: argparse._ActionsContainer) -> None:
    """The tokenizer-loss flags against blur: an adversarial patch discriminator and a frequency term
    (:mod:`wm_video.tokenizer.adversarial`, :mod:`wm_video.tokenizer.loss`)."""
    group.add_argument(
        "--adversarial-weight",
        type=non_negative_float,
        default=0.0,
        help="weight of the adversarial loss from a patch discriminator trained from scratch beside the "
        "tokenizer (hinge loss, times VQGAN's adaptive weight: the ratio of the reconstruction and "
        "adversarial gradient norms at the decoder's last layer); it rewards texture over flat colour. "
        "0: off, no discriminator (default 0)",
    )
    group.add_argument(
        "--adversarial-start",
        type=non_negative_int,
        default=0,
        help="step from which the discriminator trains; the adversarial term then ramps in over "
        "--adversarial-ramp steps. Let a fresh tokenizer's reconstruction settle first (e.g. half its steps); "
        "a fine-tune from a trained tokenizer can start at 0 (default 0)",
    )
    group.add_argument(
        "--adversarial-ramp",
        type=non_negative_int,
        default=200,
        help="steps after --adversarial-start over which the adversarial term rises linearly to its "
        "full weight (default 200)",
    )
    group.add_argument(
        "--discriminator-lr",
        type=positive_float,
        default=2e-4,
        help="the discriminator's constant Adam learning rate (betas 0.5, 0.9; no schedule): it starts from "
        "scratch and must keep up with the tokenizer (default 2e-4)",
    )
    group.add_argument(
        "--frequency-weight",
        type=non_negative_float,
        default=0.0,
        help="weight of the L1 distance between the amplitude spectra (2D FFT) of each reconstructed and "
        "real frame: the high frequencies of texture that a blurred frame loses; 0: off (default 0)",
    )


def fsq_levels(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated FSQ levels, each an integer ≥ 2 (``8,8,8,5,5,5``)."""
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers such as 8,8,8,5,5,5, got {text!r}") from None
    if any(level < 2 for level in levels):
        raise argparse.ArgumentTypeError(f"each level must be ≥ 2, got {text!r}")
    return levels


def add_tokenizer_shape_flags(group: argparse._ActionsContainer) -> None:
    """``--patch-size`` and ``--levels``: a tokenizer shape other than its preset's (a fresh tokenizer only)."""
    group.add_argument(
        "--patch-size",
        type=positive_int,
        default=None,
        help="pixels per token side, overriding the preset's (tiny: 8, 64 tokens a frame; 4 gives 256 tokens, "
        "for objects a pixel or two wide); must divide the image size",
    )
    group.add_argument(
        "--levels",
        type=fsq_levels,
        default=None,
        help="FSQ levels per latent channel, comma-separated, overriding the preset's (tiny: 7,5,5,5,5, "
        "12.1 bits a token; 8,8,8,5,5,5: 16.0 bits); codes per token = their product",
    )


FINETUNE_DEFAULTS = SessionOptions(out=Path("run"), lr=1e-4, warmup_steps=50, eval_every=250, save_every=250)


def add_finetune_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``wm-video finetune``: what to fine-tune, the tokenizer phase, then the session flags."""
    what = parser.add_argument_group("what to fine-tune")
    what.add_argument("--data", type=Path, required=True, help="the new footage (LeRobot v3.0/v2.1 folder)")
    what.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        help="a dynamics run or checkpoint; its tokenizer is found through the checkpoint",
    )
    what.add_argument(
        "--tokenizer-steps", type=int, default=500, help="tokenizer steps; 0 keeps it as it is (default 500)"
    )
    what.add_argument("--dynamics-steps", type=int, default=2000, help="dynamics steps (default 2000)")
    what.add_argument(
        "--clip-len", type=int, default=None, help="dynamics clip length (default: the source run's)"
    )
    tokenizer = parser.add_argument_group("tokenizer phase")
    tokenizer.add_argument(
        "--tokenizer-lr",
        type=positive_float,
        default=5e-4,
        help="peak learning rate of the tokenizer phase (default 5e-4; --lr is the dynamics phase's)",
    )
    tokenizer.add_argument(
        "--tokenizer-batch-size",
        type=positive_int,
        default=8,
        help="clips per process per step in the tokenizer phase (default 8; --batch-size is the dynamics phase's)",
    )
    tokenizer.add_argument(
        "--fresh-tokenizer",
        action="store_true",
        help="train a tokenizer of the world's shape from scratch instead of fine-tuning the world's",
    )
    add_code_embedding_flag(tokenizer)
    tokenizer.add_argument(
        "--table-steps",
        type=int,
        default=0,
        help="after --tokenizer-steps (kept in RUN/first), add the code table of --code-embedding to that "
        "tokenizer and train it this many steps more into RUN/tokenizer: the long recipe's tokenizer "
        "(1500), which keeps a ball a pixel wide where one trained with the table from the start does not "
        "(default 0: one tokenizer phase)",
    )
    add_change_flags(tokenizer, default_weight=50.0)
    add_object_weight_flag(tokenizer, "--tokenizer-object-weight")
    dynamics = parser.add_argument_group("dynamics phase: loss weighting (where the game happens) and the model")
    add_token_weight_flags(dynamics)
    add_chain_digits_flag(dynamics)
    add_sharpness_flags(tokenizer)
    add_session_flags(parser, FINETUNE_DEFAULTS, with_max_steps=False)

