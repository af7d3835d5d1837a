"""``wm-video play``: play a generated world in a window, or headless for automation.

pygame, torch and the models are imported inside the handler, so ``wm-video --help`` stays
instant and importing this module costs nothing.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from wm_video.cli_args import (
    Commands,
    add_compile_flag,
    add_device_flag,
    add_dtype_flag,
    add_progress_flag,
    add_sampling_flags,
    add_threads_flag,
    counted,
    device_and_threads,
    non_negative_float,
    positive_float,
    positive_int,
    sampling_overrides,
)

#: Where F5 recordings and F12 screenshots go unless --out says otherwise: a folder of the user's,
#: never the repository or whatever folder play was started in.
DEFAULT_OUT = Path("~/wm-video/recordings").expanduser()
NO_DISPLAY_HINT = "use --headless (or run under xvfb-run)"

#: `--preset` choices: the keys of wm_video.dynamics.DYNAMICS_PRESETS, written out so that
#: `--help` does not import torch (tests/test_play_cli.py checks they agree).
PRESETS = ("tiny", "base")


def _play(args: argparse.Namespace) -> int:
    import numpy as np

    from wm_video.errors import InputError
    from wm_video.play.keymap import COMMAND_KEYS, derive_keymap
    from wm_video.play.session import PlaySession, Shadow
    from wm_video.play.start import StartContext, dataset_info, default_start, load_start, open_world
    from wm_video.sources import make_source
    from wm_video.sources.policies import load_policy

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.max_frames is not None:
        logging.warning("--max-frames is now --frames (the same flag headless and in a window)")
        args.frames = args.frames or args.max_frames
    if args.checkpoint is not None and args.preset is not None:
        raise InputError("give --checkpoint RUN or --preset NAME, not both")
    if args.shadow and args.start_from is not None:
        raise InputError("--shadow starts the model from the real engine's frames; leave out --start-from")
    if not args.headless:  # before the model loads: without a screen, say so at once
        from wm_video.play.record import check_display

        check_display(NO_DISPLAY_HINT)
    device = device_and_threads(args, logging.info)
    world = open_world(
        args.checkpoint,
        preset=args.preset,
        tokenizer=args.tokenizer,
        device=device,
        seed=args.seed,
        sampling=sampling_overrides(args),
        dtype=args.dtype,
        compile=args.compile,
    )
    space, config = world.action_space, world.dynamics.config
    info = dataset_info(world.meta, tuple(space.names))
    fps = args.fps or info.fps
    context, history = config.context_frames, world.tokenizer.config.encoder_reach
    shadow = None
    if args.start_from is not None:
        start = load_start(args.start_from, space=space, context_frames=context, history_frames=history)
    elif args.shadow:  # the model starts from the real engine's frames; no other start is read
        start = StartContext(np.zeros((1, world.image_size, world.image_size, 3), np.uint8), None, "-")
    else:
        start = default_start(info, space=space, context_frames=context, image_size=world.image_size)
    if args.shadow:
        source_name = str(info.source.get("source") or "vizdoom")
        engine = make_source(
            source_name,
            scenario=args.scenario or info.source.get("scenario"),
            size=world.image_size,
            frame_skip=info.source.get("frame_skip"),
        )
        if tuple(engine.action_space.names) != tuple(space.names):
            engine.close()
            raise InputError(
                f"--shadow: the real {source_name} engine has the actions {list(engine.action_space.names)}, "
                f"the model {list(space.names)}"
            )
        shadow = Shadow(engine, seed=args.seed, context_frames=context, history_frames=history)
    source_info = {
        "generated_by": str(world.meta.get("checkpoint") or f"preset {args.preset} (random weights)"),
        "start": start.label,
    }
    session = PlaySession(
        world, start, fps=fps, rewind_seconds=args.rewind_seconds, shadow=shadow, source_info=source_info
    )
    begins = "the real engine (shadow)" if shadow is not None else start.label
    logging.info("world: %s · start: %s · %.1f fps", source_info["generated_by"], begins, fps)

    if args.headless:
        from .headless import run_headless

        if args.record is None and args.record_dataset is None:
            logging.info("nothing is recorded (add --record OUT.mp4 and/or --record-dataset DIR)")
        policy = load_policy(args.actions, space)
        if policy.needs_truth:
            raise InputError(
                f"--actions {args.actions}: hunt aims with the real engine's ground truth, which a world "
                "model does not give; use explore, random or a JSONL script"
            )
        frames = args.frames
        if frames is None:
            script = getattr(policy, "actions", None)
            frames = len(script) if isinstance(script, list) else 1000
        result = run_headless(
            session,
            policy,
            frames=frames,
            video=args.record,
            dataset=args.record_dataset,
            video_scale=args.video_scale,
            seed=args.seed,
            progress=not args.no_progress,
        )
        print(result.format())
        return 0

    from wm_video.play.keys import KeyboardActions
    from wm_video.play.window import PlayWindow

    keymap = derive_keymap(
        space, dataset_keymap=info.keymap, path=args.keymap, reserved=frozenset(COMMAND_KEYS)
    )
    keys = KeyboardActions(space, keymap, mouse_turn=args.mouse)
    logging.info("keys: %s", keys.describe())
    logging.info(
        "Esc quits · Enter resets · P pauses · Backspace rewinds · F5 records · F12 screenshot · H HUD"
        + (" · Tab resyncs" if shadow else "")
    )
    window = PlayWindow(session, keys, fps=fps, scale=args.scale, out_dir=args.out, show_hud=not args.no_hud)
    outcome = window.run(max_frames=args.frames)
    print(f"played {counted(outcome.frames, 'frame')} (stopped: {outcome.stopped_by})")
    for recording in outcome.recordings:
        print(recording.describe())
    for path in outcome.screenshots:
        print(f"screenshot {path}")
    return 0


def register(commands: Commands) -> None:
    """Add ``wm-video play``."""
    p = commands.add_parser(
        "play",
        help="play a generated world in a window (or headless, for automation and evaluation)",
        description="Play a generated world. Keys come from the model's action names (W/S forward/back, "
        "A/D strafe, ←/→ turn, Space attack, E use in the default world). Esc quits, Enter resets, "
        "P pauses, Backspace rewinds, F5 records a dataset episode and an mp4, F12 saves a screenshot, "
        "H toggles the HUD, Tab resyncs the model from the real engine (--shadow).",
    )
    group = p.add_argument_group("world")
    group.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="dynamics run or step folder, or an exported world (default: checkpoints/default/, the shipped one)",
    )
    group.add_argument(
        "--preset", choices=PRESETS, default=None, help="random weights of this preset instead (development)"
    )
    group.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer checkpoint (default: the one the checkpoint names)",
    )
    add_device_flag(group)
    add_dtype_flag(group)
    add_compile_flag(group)
    group.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    add_threads_flag(group)
    add_sampling_flags(group)
    group.add_argument(
        "--start-from",
        default=None,
        metavar="IMAGE|DATASET_DIR[:EPISODE[:FRAME]]",
        help="start from a picture or a recorded frame; EPISODE defaults to the dataset's first held-out "
        "one (default: the checkpoint's data or shipped start, else the real game)",
    )
    group.add_argument(
        "--fps", type=positive_float, default=None, help="pace (default: the world's own fps, 17.5 for Doom)"
    )
    group.add_argument(
        "--rewind-seconds",
        type=non_negative_float,
        default=3.0,
        help="how far Backspace rewinds (default 3; 0: off)",
    )
    group = p.add_argument_group("window")
    group.add_argument("--scale", type=positive_int, default=8, help="integer zoom of the frames (default 8)")
    group.add_argument(
        "--keymap", type=Path, default=None, help="JSON file {key name: button} replacing the keys"
    )
    group.add_argument("--mouse", action="store_true", help="turn with the mouse's x motion too")
    group.add_argument("--no-hud", action="store_true", help="start with the HUD hidden (H shows it)")
    group.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder for F5 recordings and F12 screenshots (default {DEFAULT_OUT})",
    )
    group.add_argument("--max-frames", type=positive_int, default=None, help=argparse.SUPPRESS)  # now --frames
    group = p.add_argument_group("shadow: the real engine beside the model")
    group.add_argument(
        "--shadow",
        action="store_true",
        help="split screen real | generated with the same actions, PSNR in the HUD",
    )
    group.add_argument(
        "--scenario", default=None, help="real engine's scenario (default: the one the data was collected in)"
    )
    group = p.add_argument_group("headless")
    group.add_argument("--headless", action="store_true", help="no window: a policy or script plays")
    group.add_argument(
        "--actions", default="explore", help="explore (default), random, or a JSONL action script"
    )
    group.add_argument(
        "--frames",
        type=positive_int,
        default=None,
        help="frames to generate, then quit (headless default: the script's length, else 1000; "
        "a window plays until you quit)",
    )
    add_progress_flag(group)
    group.add_argument("--record", type=Path, default=None, help="write the frames shown to this .mp4")
    group.add_argument(
        "--record-dataset", type=Path, default=None, help="and/or append them as an episode to this dataset"
    )
    group.add_argument(
        "--video-scale", type=positive_int, default=1, help="integer zoom of the --record video (default 1)"
    )
    p.set_defaults(handler=_play)
