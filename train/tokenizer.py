"""Train the video tokenizer: ``wm-video train tokenizer --data DIR --preset tiny --out RUN``.

The same program runs on a CPU, one GPU, or several processes under ``accelerate launch`` or
``torchrun`` (``python -m wm_video.train.tokenizer …``): each rank draws its own clips from the
training cache and Accelerate averages gradients. A checkpoint is written every
``--save-every`` steps, at the end and on Ctrl-C or SIGTERM (:mod:`wm_video.checkpoint`);
running the command again with the same ``--out`` resumes from the newest one.

Written to RUN: ``run.json`` (options), ``log.jsonl`` (training metrics every ``--log-every``
steps; ``heldout_psnr`` of the EMA model every ``--eval-every``), ``samples/step-*.png``
(held-out clips, real above the EMA reconstruction), ``checkpoints/``.

``--init CKPT`` starts from a trained tokenizer (its shape and EMA weights): a fine-tune. Against
blur, ``--frequency-weight`` adds a distance between amplitude spectra
(:mod:`wm_video.tokenizer.loss`) and ``--adversarial-weight`` a patch discriminator trained from
scratch beside the tokenizer (:mod:`wm_video.tokenizer.adversarial`; fresh in a fine-tune too),
from ``--adversarial-start``; its weights and optimizer state are in the checkpoints' training
state, so a run with it resumes exactly too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from wm_video.checkpoint import load_tokenizer, resolve_checkpoint
from wm_video.data.background import median_frame
from wm_video.data.cache import TrainingCache, load_cache
from wm_video.data.lerobot import read_info
from wm_video.data.objects import load_object_masks, require_labels
from wm_video.data.sampler import ClipSampler
from wm_video.data.split import DEFAULT_HOLDOUT, split_episodes
from wm_video.errors import EXIT_STOPPED, InputError
from wm_video.metrics import psnr
from wm_video.tokenizer import TOKENIZER_PRESETS, TokenizerConfig, VideoTokenizer, tokenizer_preset
from wm_video.tokenizer.adversarial import AdversarialConfig, AdversarialLosses, adversarial_losses
from wm_video.tokenizer.discriminator import DiscriminatorConfig, PatchDiscriminator
from wm_video.tokenizer.loss import ReconstructionLossConfig, reconstruction_loss
from wm_video.tokenizer.model import with_code_embedding
from wm_video.tokenizer.pixels import to_model_pixels, to_uint8_frames
from wm_video.train.common import save_comparison_grid
from wm_video.train.options import (
    add_change_flags,
    add_code_embedding_flag,
    add_init_flag,
    add_object_weight_flag,
    add_sharpness_flags,
    add_tokenizer_shape_flags,
)
from wm_video.train.prefetch import Batch
from wm_video.train.session import (
    SessionOptions,
    StepResult,
    TrainingSession,
    add_session_flags,
    run_training_program,
    session_options,
)

PROBE_CLIPS = 6  # held-out clips scored and drawn at every eval step


@dataclass(frozen=True)
class TokenizerTrainOptions:
    data: Path
    session: SessionOptions
    preset: str = "tiny"
    clip_len: int = 8
    l1_weight: float = 0.2
    change_weight: float = 0.0  # extra loss weight where frames change (wm_video.tokenizer.loss); 0: none
    change_reference: str = "previous"  # what "change" is measured against: "previous" or "median" frame
    object_weight: float = 0.0  # extra loss weight on object pixels (the dataset's labels); 0: none
    frequency_weight: float = 0.0  # L1 between amplitude spectra (wm_video.tokenizer.loss); 0: none
    adversarial: AdversarialConfig = AdversarialConfig()  # weight 0: no discriminator
    holdout: float = DEFAULT_HOLDOUT
    init: Path | None = None  # start from this tokenizer checkpoint (its config and EMA weights): fine-tuning
    config: TokenizerConfig | None = None  # the model's shape when not from init; None: the preset's
    code_embedding: bool = False  # give the decoder a vector per code (added at zero to an init without one)


@dataclass(frozen=True)
class TokenizerTrainResult:
    run: Path
    step: int
    heldout_psnr: float | None  # per-frame mean, EMA weights, last eval
    seconds: float
    stopped_early: bool
    stopped_by_signal: bool = False  # Ctrl-C or SIGTERM: the program exits 130


@torch.inference_mode()
def probe(model: VideoTokenizer, frames: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Per-frame mean PSNR (uint8 frames, as viewed) and the uint8 reconstructions of (B, T) clips."""
    reconstruction = to_uint8_frames(model(frames).reconstruction)
    real = to_uint8_frames(frames)
    score = psnr(reconstruction.permute(0, 1, 4, 2, 3), real.permute(0, 1, 4, 2, 3)).clamp(max=100.0)
    return float(score.mean()), reconstruction


def _episodes_with_clips(cache: TrainingCache, episodes: Sequence[int], clip_len: int) -> list[int]:
    lengths = dict(zip(cache.episode_indices.tolist(), cache.episode_lengths.tolist(), strict=True))
    return [e for e in episodes if lengths[e] >= clip_len]


def shaped_config(
    config: TokenizerConfig, patch_size: int | None = None, levels: Sequence[int] | None = None
) -> TokenizerConfig:
    """``config`` with ``--patch-size`` and ``--levels`` where given (validated by the config itself)."""
    return replace(
        config,
        patch_size=config.patch_size if patch_size is None else patch_size,
        levels=config.levels if levels is None else tuple(levels),
    )


def train_tokenizer(options: TokenizerTrainOptions) -> TokenizerTrainResult:
    initial = load_tokenizer(options.init)[0].train() if options.init is not None else None
    if initial is not None and options.code_embedding:
        initial = with_code_embedding(initial)
    config = initial.config if initial is not None else options.config or tokenizer_preset(options.preset)
    if options.code_embedding:
        config = replace(config, code_embedding=True)
    if options.clip_len < 1:
        raise InputError(f"--clip-len must be ≥ 1, got {options.clip_len}")
    loss_config = ReconstructionLossConfig(
        l1_weight=options.l1_weight,
        change_weight=options.change_weight,
        change_reference=options.change_reference,
        object_weight=options.object_weight,
        frequency_weight=options.frequency_weight,
    )
    adversarial = options.adversarial
    read_info(options.data)  # a clear error for a missing or foreign folder before the run folder is made
    if loss_config.object_weight > 0:
        require_labels(options.data)
    session = TrainingSession(
        kind="tokenizer",
        options=options.session,
        program_options={
            "data": str(options.data),
            "preset": options.preset,
            "clip_len": options.clip_len,
            "l1_weight": options.l1_weight,
            "change_weight": options.change_weight,
            "change_reference": options.change_reference,
            "object_weight": options.object_weight,
            "frequency_weight": options.frequency_weight,
            **(
                {"adversarial": asdict(adversarial), "discriminator": DiscriminatorConfig().to_dict()}
                if adversarial.enabled
                else {}
            ),
            "holdout": options.holdout,
            "patch_size": config.patch_size,
            "levels": list(config.levels),
            "code_embedding": config.code_embedding,
            **({"init": str(resolve_checkpoint(options.init))} if options.init is not None else {}),
        },
    )
    o = options.session
    with session.accelerator.main_process_first():
        cache = load_cache(
            options.data,
            size=config.image_size,
            cache_root=o.cache_dir,
            progress=session.is_main and o.progress,
        )
        masks = None
        if loss_config.object_weight > 0:
            masks = load_object_masks(
                options.data, cache, cache_root=o.cache_dir, progress=session.is_main and o.progress
            )
    split = split_episodes(cache.episode_indices.tolist(), options.holdout)
    train_episodes = _episodes_with_clips(cache, split.train, options.clip_len)
    if not train_episodes:
        raise InputError(
            f"{options.data}: no training episode has {options.clip_len} frames; lower --clip-len"
        )
    sampler = ClipSampler(
        cache,
        options.clip_len,
        seed=o.seed,
        rank=session.rank,
        world_size=session.world_size,
        episodes=train_episodes,
        masks=masks,
    )
    probe_episodes = _episodes_with_clips(cache, split.heldout, options.clip_len) or train_episodes
    probe_frames = to_model_pixels(
        ClipSampler(cache, options.clip_len, seed=12345, episodes=probe_episodes)
        .sample_batch(PROBE_CLIPS)
        .frames,
        session.device,
    )
    torch.manual_seed(o.seed)
    tokenizer = initial or VideoTokenizer(config)
    discriminator = PatchDiscriminator(DiscriminatorConfig()) if adversarial.enabled else None  # fresh
    model, _, ema, _ = session.prepare(
        tokenizer, config.to_dict(), sampler, discriminator, adversarial.discriminator_lr
    )
    median = (
        to_model_pixels(torch.from_numpy(median_frame(cache, train_episodes)), session.device)
        if loss_config.needs_median
        else None
    )  # (3, H, W)
    meta = {
        "data": str(options.data),
        "holdout": options.holdout,
        "heldout_episodes": list(split.heldout),
        "probe_is_heldout": bool(split.heldout and probe_episodes != train_episodes),
    }
    parameters = sum(p.numel() for p in model.parameters())
    if session.is_main:
        print(
            f"tokenizer {'from ' + str(options.init) if options.init else options.preset}: {parameters / 1e6:.1f} M parameters, "
            f"{config.tokens_per_frame} tokens/frame ({config.bits_per_frame:.0f} bits); {cache.num_frames:,} frames, "
            f"{len(train_episodes)} training / {len(split.heldout)} held-out episodes; {session.world_size} process(es) "
            f"on {session.device}, precision {session.precision}",
            flush=True,
        )

    def draw() -> Batch:
        batch = sampler.sample_batch(o.batch_size)
        drawn = {"frames": torch.from_numpy(batch.frames)}  # (B, T, H, W, 3) uint8
        if batch.masks is not None:
            drawn["objects"] = torch.from_numpy(batch.masks)  # (B, T, H, W) uint8, 1 on object pixels
        return drawn

    @torch.compiler.disable  # reads the step: eager, or a compiled step would be recompiled at every step
    def adversarial_terms(
        reconstruction: torch.Tensor, frames: torch.Tensor, pixel_loss: torch.Tensor
    ) -> AdversarialLosses | None:
        """The adversarial terms from --adversarial-start on; None before."""
        at = session.current_step
        if session.discriminator is None or session.core_discriminator is None or not adversarial.active(at):
            return None
        return adversarial_losses(
            reconstruction,
            frames,
            pixel_loss,
            discriminator=session.discriminator,
            core_discriminator=session.core_discriminator,
            last_layer=tokenizer.to_pixels.weight,
            config=adversarial,
            step=at,
        )

    def step_loss(batch: Batch) -> StepResult:
        frames = to_model_pixels(batch["frames"], session.device)  # (B, T, 3, H, W) in [-1, 1]
        objects = batch["objects"].unsqueeze(2) if "objects" in batch else None  # (B, T, 1, H, W)
        reconstruction = model(frames).reconstruction
        losses = reconstruction_loss(reconstruction, frames, loss_config, median, objects)
        mse = losses.mse.detach()
        metrics = {"mse": mse, "train_psnr": 10 * torch.log10(4.0 / mse)}
        if losses.frequency is not None:
            metrics["frequency"] = losses.frequency.detach()
        terms = adversarial_terms(reconstruction, frames, losses.total) if adversarial.enabled else None
        if terms is None:
            return StepResult(losses.total, metrics)
        return StepResult(losses.total + terms.generator, {**metrics, **terms.metrics()}, terms.discriminator)

    def evaluate(at: int) -> dict[str, float]:
        heldout_psnr, reconstruction = probe(ema.model, probe_frames)
        grid = save_comparison_grid(
            to_uint8_frames(probe_frames).cpu().numpy(),
            reconstruction.cpu().numpy(),
            session.out / "samples" / f"step-{at:08d}.png",
        )
        session.logger.log_image(at, "samples", grid)
        tqdm.write(f"step {at}: held-out PSNR {heldout_psnr:.2f} dB (EMA, per-frame mean)")
        return {"heldout_psnr": heldout_psnr}

    result = session.run(
        draw=draw,
        step=step_loss,
        probe=evaluate,
        meta=meta,
        frames_per_batch=o.batch_size * options.clip_len,
        tokens_per_frame=config.tokens_per_frame,
    )
    return TokenizerTrainResult(
        session.out,
        result.step,
        result.probe.get("heldout_psnr"),
        result.seconds,
        result.stopped_early,
        result.stopped_by_signal,
    )


def adversarial_config(args: argparse.Namespace) -> AdversarialConfig:
    """The :class:`AdversarialConfig` of parsed :func:`~wm_video.train.options.add_sharpness_flags` flags."""
    return AdversarialConfig(
        weight=args.adversarial_weight,
        start=args.adversarial_start,
        ramp_steps=args.adversarial_ramp,
        discriminator_lr=args.discriminator_lr,
    )


def build_parser(prog: str = "wm-video train tokenizer") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Train the causal video tokenizer on a dataset.")
    data = parser.add_argument_group("data and model")
    data.add_argument("--data", type=Path, required=True, help="dataset folder (LeRobot v3.0/v2.1)")
    data.add_argument(
        "--preset", choices=sorted(TOKENIZER_PRESETS), default="tiny", help="model size (default tiny)"
    )
    data.add_argument("--clip-len", type=int, default=8, help="frames per training clip (default 8)")
    data.add_argument(
        "--l1-weight", type=float, default=0.2, help="weight of the L1 term beside MSE (default 0.2)"
    )
    add_tokenizer_shape_flags(data)
    add_code_embedding_flag(data)
    add_init_flag(data, "tokenizer")
    add_change_flags(data)
    add_object_weight_flag(data)
    add_sharpness_flags(parser.add_argument_group("sharpness (losses against blur)"))
    data.add_argument(
        "--holdout",
        type=float,
        default=DEFAULT_HOLDOUT,
        help="fraction of episodes held out, the last ones (default 0.1)",
    )
    add_session_flags(parser, SessionOptions(out=Path("run")))
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "wm-video train tokenizer") -> int:
    args = build_parser(prog).parse_args(argv)

    def run() -> int:
        if args.init is not None and (args.patch_size is not None or args.levels is not None):
            raise InputError("--patch-size and --levels shape a fresh tokenizer; --init keeps its checkpoint's shape")
        options = TokenizerTrainOptions(
            data=args.data,
            session=session_options(args),
            preset=args.preset,
            clip_len=args.clip_len,
            l1_weight=args.l1_weight,
            change_weight=args.change_weight,
            change_reference=args.change_reference,
            object_weight=args.tokenizer_object_weight,
            frequency_weight=args.frequency_weight,
            adversarial=adversarial_config(args),
            holdout=args.holdout,
            init=args.init,
            config=shaped_config(tokenizer_preset(args.preset), args.patch_size, args.levels),
            code_embedding=args.code_embedding,
        )
        result = train_tokenizer(options)
        if result.heldout_psnr is not None:
            print(
                f"{result.run}: step {result.step}, held-out PSNR {result.heldout_psnr:.2f} dB ({result.seconds:.0f} s)"
            )
        return EXIT_STOPPED if result.stopped_by_signal else 0

    return run_training_program(prog, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m wm_video.train.tokenizer"))
