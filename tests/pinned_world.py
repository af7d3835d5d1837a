"""What the shipped world plays, pinned: the reference ``tests/data/default_world_frames.safetensors``.

The reference was written by :func:`write_reference` with the code of main at 3ac10fc, before
the tokenizer's and the trunk's attention became one module (issue 17); the tests in
``tests/test_default_world.py`` compare today's code with it. Regenerate it only when the shipped
world itself changes: ``python tests/pinned_world.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

REFERENCE = Path(__file__).parent / "data" / "default_world_frames.safetensors"
STEPS = 16  # generated frames pinned


def pinned_actions(names: tuple[str, ...], steps: int = STEPS) -> np.ndarray:
    """(steps, A) a fixed program: each button in turn, held 2 frames, every third frame forward too."""
    actions = np.zeros((steps, len(names)), np.float32)
    for t in range(steps):
        actions[t, (t // 2) % len(names)] = 1.0
        if t % 3 == 0:
            actions[t, names.index("forward")] = 1.0
    return actions


def play_reference(checkpoint: Path) -> dict[str, np.ndarray]:
    """Frames, tokens and clip-path outputs of the shipped world (one thread, seed 0)."""
    from wm_video.engine import load_world
    from wm_video.play.start import shipped_start
    from wm_video.sources.vizdoom import ACTION_SPACE
    from wm_video.tokenizer.pixels import to_model_pixels, to_uint8_frames

    world = load_world(checkpoint)
    context = world.dynamics.config.context_frames
    start = shipped_start(checkpoint / "start.safetensors", space=ACTION_SPACE, context_frames=context)
    assert start.actions is not None
    actions = pinned_actions(ACTION_SPACE.names)
    shown = world.reset(start.frames, start.actions, seed=0)
    frames, tokens = [shown], []
    for action in actions:
        step_tokens = world.advance(action)
        tokens.append(step_tokens[0].numpy().copy())
        frames.append(world.render(step_tokens)[0].numpy())
    with torch.inference_mode():
        tokenizer, dynamics = world.tokenizer, world.dynamics
        pixels = to_model_pixels(start.frames[None], world.device)  # (1, T, 3, H, W)
        clip_tokens = tokenizer.encode(pixels).tokens
        reconstruction = to_uint8_frames(tokenizer.decode_tokens(clip_tokens))
        partial = torch.where(torch.arange(64)[None, None] % 3 == 0, dynamics.mask_id, clip_tokens[:, 1:])
        logits = dynamics(clip_tokens[:, :-1], torch.from_numpy(start.actions)[None], partial)
    return {
        "frames": np.stack(frames),  # (1 + STEPS, H, W, 3) uint8: the reset frame, then each step's
        "tokens": np.stack(tokens).astype(np.int64),  # (STEPS, N)
        "actions": actions,
        "clip_tokens": clip_tokens[0].numpy().astype(np.int64),  # (T, N) the start frames, whole clip
        "clip_reconstruction": reconstruction[0].numpy(),  # (T, H, W, 3)
        "clip_logits": logits[0].float().numpy(),  # (T − 1, N, ΣL) teacher-forced, a third masked
    }


def write_reference(checkpoint: Path) -> None:
    from safetensors.numpy import save_file

    torch.set_num_threads(1)
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in play_reference(checkpoint).items()}, str(REFERENCE))


if __name__ == "__main__":
    from wm_video.play.start import DEFAULT_CHECKPOINT

    write_reference(DEFAULT_CHECKPOINT)
    print(f"wrote {REFERENCE}")
