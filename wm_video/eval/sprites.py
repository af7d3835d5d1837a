"""The few pixels a 2-D game is about: are its sprites (paddle, ball) kept, and do they obey the keys?

A world model of Breakout that draws the walls and bricks but no paddle and no ball scores
~30 dB PSNR and is not Breakout. This module measures what PSNR hides, for games filmed by a
fixed camera.

Design choices:
- **A detector fitted on the footage, not trained.** The background is the per-pixel median of
  the training frames (:func:`wm_video.data.background.median_frame`); a pixel is foreground
  where its largest channel differs from the background by more than ``threshold`` (32 of 255).
  A sprite is an 8-connected blob of foreground inside its region of the frame (a
  :class:`Sprite`: the paddle's row band, the ball's playfield) whose size lies in the sprite's
  range (given at 64 px, scaled with the frame's area): a smear over the whole region is not a
  paddle. The strongest such blob is the sprite; its position is the difference-weighted
  centroid. Regions and sizes are data (:data:`GAME_SPRITES`, per Atari game), as keymaps are.
- **Kept** (:func:`kept`, for tokenizer reconstructions): a sprite found in the real frame is
  kept when the other frame's sprite, its strongest blob as everywhere in this module, lies within
  2 px of it (in x and in y, at 64 px). Any sprite-sized blob nearby would not do: a tokenizer
  unsure where in its patch the ball is draws a cloud of dim dots there, and one of them lands
  near the ball while the player sees a smudge. Frames without the sprite in the real footage are
  not counted ("present where present in the real frame").
- **Motion under the keys** (:func:`motion_check`): from a held-out frame, the dataset's own
  engine (a ``wm-video collect`` dataset records it, and episode *i* replays from seed
  ``seed + i`` with its recorded actions) and the world model are both driven with one button
  held for ``horizon`` frames; the player sprite's displacement per frame is compared where the
  real one moved (≥ 1 px): the share of frames whose sign agrees (a vanished sprite disagrees),
  and the median speeds. The replay is checked against the dataset's frames before it is used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wm_video.errors import InputError

FOREGROUND_THRESHOLD = 32  # of 255: the largest channel difference from the background
KEPT_DISTANCE_PX = 2.0  # at 64 px: a kept sprite lies this close (in x and in y) to the real one
MOVED_PX = 1.0  # a real displacement at least this large (pixels per frame) counts as motion
REPLAY_MIN_PSNR = 35.0  # dB: a replayed frame must match the dataset's this well (H.264: ~44)


@dataclass(frozen=True)
class Sprite:
    """A small object of a game, found in a fixed region of the frame."""

    name: str
    region: tuple[float, float, float, float]  # top, bottom, left, right, as fractions of the frame
    min_pixels: int = 1  # a blob of foreground this large (pixels, at 64×64) …
    max_pixels: int = 8  # … up to this large is the sprite; larger ones are something else
    axis: str | None = None  # the player's sprite: "x" or "y", the axis the buttons move it along
    buttons: tuple[str, str] = ("", "")  # (moves it toward −axis, toward +axis)

    def __post_init__(self) -> None:
        top, bottom, left, right = self.region
        if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
            raise InputError(
                f"sprite {self.name!r}: region {self.region} must be top < bottom, left < right in [0, 1]"
            )
        if self.axis not in (None, "x", "y"):
            raise InputError(f"sprite {self.name!r}: axis must be 'x', 'y' or None, got {self.axis!r}")

    def mask(self, size: int) -> np.ndarray:
        """(size, size) bool: the sprite's region in a square frame."""
        top, bottom, left, right = (round(v * size) for v in self.region)
        region = np.zeros((size, size), dtype=bool)
        region[top:bottom, left:right] = True
        return region

    def pixels_range(self, size: int) -> tuple[int, int]:
        """(min_pixels, max_pixels) at a frame size of ``size``."""
        scale = size * size / 64**2
        return max(1, round(self.min_pixels * scale)), max(1, round(self.max_pixels * scale))


#: Sprites of Atari games (at ale-py's 210×160 screen squeezed to a square). The player's sprite
#: comes first. Breakout: the paddle in rows 189–193 of 210, the ball between the bricks (rows
#: 57–92) and the paddle. Pong: the player's (right, green) paddle in columns 140–143 of 160,
#: moved up by "right" and down by "left"; the ball on the field between the score and the
#: bottom border.
GAME_SPRITES: dict[str, tuple[Sprite, ...]] = {
    "Breakout": (
        Sprite("paddle", (0.86, 0.95, 0.0, 1.0), 4, 40, axis="x", buttons=("left", "right")),
        Sprite("ball", (0.45, 0.86, 0.0, 1.0), 1, 8),
    ),
    "Pong": (
        Sprite("paddle", (0.16, 0.93, 0.86, 0.92), 3, 30, axis="y", buttons=("right", "left")),
        Sprite("ball", (0.16, 0.93, 0.10, 0.86), 1, 8),
    ),
}


def dataset_game(root: Path) -> str | None:
    """The Atari game a ``wm-video collect`` dataset was recorded from ("Breakout"), or None."""
    try:
        source = json.loads((Path(root) / "meta" / "wm_video.json").read_text()).get("source", {})
    except (OSError, ValueError):
        return None
    if not isinstance(source, dict) or source.get("source") != "atari":
        return None
    game = str(source.get("game", ""))
    return game.removeprefix("ALE/").split("-v")[0] or None


def game_sprites(game: str) -> tuple[Sprite, ...]:
    if game not in GAME_SPRITES:
        raise InputError(f"no sprites are known for the game {game!r}; known games: {sorted(GAME_SPRITES)}")
    return GAME_SPRITES[game]


@dataclass(frozen=True)
class Blob:
    """One sprite-sized connected patch of foreground."""

    x: float  # difference-weighted centroid, pixels
    y: float
    area: int  # pixels
    weight: float  # summed difference


class SpriteDetector:
    """Finds :class:`Sprite` s as foreground against a background frame (see the module docstring)."""

    def __init__(
        self, background: np.ndarray, sprites: Sequence[Sprite], threshold: int = FOREGROUND_THRESHOLD
    ) -> None:
        if background.ndim != 3 or background.shape[0] != background.shape[1] or background.shape[2] != 3:
            raise InputError(f"the background must be a square uint8 (S, S, 3) frame; got {background.shape}")
        self.background = background.astype(np.int16)
        self.sprites = tuple(sprites)
        self.threshold = threshold
        self.size = background.shape[0]
        self.masks = {s.name: s.mask(self.size) for s in self.sprites}
        self.tolerance = KEPT_DISTANCE_PX * self.size / 64

    @property
    def player(self) -> Sprite | None:
        return next((s for s in self.sprites if s.axis is not None), None)

    def difference(self, frame: np.ndarray) -> np.ndarray:
        """uint8 (S, S, 3) → (S, S) int16: the largest channel difference from the background."""
        if frame.shape != self.background.shape:
            raise InputError(
                f"a frame of {frame.shape} does not match the background's {self.background.shape}"
            )
        return np.abs(frame.astype(np.int16) - self.background).max(axis=-1)

    def blobs(self, frame: np.ndarray, sprite: Sprite) -> list[Blob]:
        """The sprite-sized patches of foreground (8-connected) inside the sprite's region of one frame."""
        difference = self.difference(frame)
        inside = ((difference > self.threshold) & self.masks[sprite.name]).astype(np.uint8)
        count, labels = cv2.connectedComponents(inside, connectivity=8)
        low, high = sprite.pixels_range(self.size)
        found = []
        for label in range(1, count):
            ys, xs = np.nonzero(labels == label)
            if low <= len(xs) <= high:
                weights = difference[ys, xs].astype(np.float64)
                total = float(weights.sum())
                found.append(Blob(float(xs @ weights) / total, float(ys @ weights) / total, len(xs), total))
        return found

    def find(self, frame: np.ndarray, sprite: Sprite) -> Blob | None:
        """The sprite in one frame (its strongest blob), or None."""
        return max(self.blobs(frame, sprite), key=lambda blob: blob.weight, default=None)

    def present(self, frames: np.ndarray, sprite: Sprite) -> np.ndarray:
        """uint8 (..., S, S, 3) → (...,) bool: the sprite is in the frame."""
        flat = frames.reshape(-1, *frames.shape[-3:])
        return np.array([self.find(f, sprite) is not None for f in flat], dtype=bool).reshape(
            frames.shape[:-3]
        )

    def position(self, frames: np.ndarray, sprite: Sprite) -> np.ndarray:
        """uint8 (..., S, S, 3) → (..., 2) float (x, y) of the sprite in pixels; NaN where absent."""
        flat = frames.reshape(-1, *frames.shape[-3:])
        blobs = [self.find(f, sprite) for f in flat]
        centres = np.array([(b.x, b.y) if b else (np.nan, np.nan) for b in blobs], dtype=np.float64)
        return centres.reshape(*frames.shape[:-3], 2)

    def keeps(self, real: np.ndarray, other: np.ndarray, sprite: Sprite) -> bool | None:
        """Whether ``other`` keeps the sprite of the ``real`` frame: its own sprite (strongest blob)
        lies within :data:`KEPT_DISTANCE_PX` (at 64 px) of it. None when the real frame has none."""
        target = self.find(real, sprite)
        if target is None:
            return None
        found = self.find(other, sprite)
        return found is not None and max(abs(found.x - target.x), abs(found.y - target.y)) <= self.tolerance


def fit_detector(background: np.ndarray, game: str) -> SpriteDetector:
    return SpriteDetector(background, game_sprites(game))


# -- kept in reconstructions ------------------------------------------------------------------------
@dataclass
class KeptCount:
    real: int = 0  # frames whose real version has the sprite
    kept: int = 0  # of those, frames where the other version keeps it

    @property
    def rate(self) -> float:
        return self.kept / self.real if self.real else float("nan")


def kept(detector: SpriteDetector, real: np.ndarray, other: np.ndarray) -> dict[str, KeptCount]:
    """Per sprite: how many of the real frames (N, S, S, 3) that have it keep it in ``other`` (same shape)."""
    if real.shape != other.shape:
        raise InputError(f"real and other frames differ in shape: {real.shape} vs {other.shape}")
    counts = {}
    for sprite in detector.sprites:
        verdicts = [detector.keeps(r, o, sprite) for r, o in zip(real, other, strict=True)]
        counts[sprite.name] = KeptCount(
            sum(v is not None for v in verdicts), sum(v is True for v in verdicts)
        )
    return counts


def add_counts(total: dict[str, KeptCount], part: dict[str, KeptCount]) -> None:
    for name, count in part.items():
        into = total.setdefault(name, KeptCount())
        into.real += count.real
        into.kept += count.kept


# -- motion under the keys ---------------------------------------------------------------------------
@dataclass
class ButtonMotion:
    button: str
    moving_frames: int  # frames where the real sprite moved ≥ MOVED_PX
    sign_agrees: float  # share of them where the generated sprite moved the same way
    real_speed: float  # median |displacement| (px/frame) of the real sprite over those frames
    generated_speed: float  # the same for the generated sprite (where it was found)

    @property
    def speed_ratio(self) -> float:
        return self.generated_speed / self.real_speed if self.real_speed > 0 else float("nan")


def displacement_scores(
    real: np.ndarray, generated: np.ndarray, axis: int
) -> tuple[int, float, float, float]:
    """Positions (B, T, 2) of the player in real and generated frames → (moving frames, share with
    the sign agreeing, median real speed, median generated speed)."""
    real_step = np.diff(real[..., axis], axis=1).ravel()
    generated_step = np.diff(generated[..., axis], axis=1).ravel()
    moving = np.abs(real_step) >= MOVED_PX  # NaN compares False: a real sprite missing is not scored
    if not moving.any():
        return 0, float("nan"), float("nan"), float("nan")
    agrees = np.sign(generated_step[moving]) == np.sign(real_step[moving])  # NaN (vanished) disagrees
    found = generated_step[moving][np.isfinite(generated_step[moving])]
    return (
        int(moving.sum()),
        float(agrees.mean()),
        float(np.median(np.abs(real_step[moving]))),
        float(np.median(np.abs(found))) if found.size else float("nan"),
    )


@dataclass
class SpriteReport:
    game: str
    frames: int  # real frames scored for presence
    real_rates: dict[str, float]  # share of real frames with each sprite
    tokenizer: dict[str, KeptCount]  # kept by the tokenizer where present in the real frame
    generated_rates: dict[str, float] = field(default_factory=dict)  # share of generated frames with it
    motion: list[ButtonMotion] = field(default_factory=list)
    motion_setup: str = ""
    strip: str = ""  # what the strip PNG shows; empty when none was written
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON; NaN (nothing to count) becomes null."""
        from wm_video.eval.tokenizer import finite_or_none

        data = asdict(self)
        data["tokenizer"] = {k: {**asdict(v), "rate": v.rate} for k, v in self.tokenizer.items()}
        data["motion"] = [{**asdict(m), "speed_ratio": m.speed_ratio} for m in self.motion]
        return dict(finite_or_none(data))

    def format(self) -> str:
        names = list(self.real_rates)
        width = max(10, *(len(n) + 2 for n in names))
        head = f"  {'sprite':<34}" + "".join(f"{n:>{width}}" for n in names)
        lines = [f"sprites of {self.game}: {self.frames} real frames, {self.seconds:.1f} s", head]

        def row(label: str, values: list[str]) -> None:
            lines.append(f"  {label:<34}" + "".join(f"{v:>{width}}" for v in values))

        row("in the real frames", [f"{self.real_rates[n]:.1%}" for n in names])
        row("kept by the tokenizer (of those)", [f"{self.tokenizer[n].rate:.1%}" for n in names])
        if self.generated_rates:
            row("in generated frames (held keys)", [f"{self.generated_rates[n]:.1%}" for n in names])
        if self.motion:
            lines.append(f"  player motion, {self.motion_setup}:")
            for m in self.motion:
                lines.append(
                    f"    {m.button:<8} sign agrees in {m.sign_agrees:.0%} of {m.moving_frames} frames where the "
                    f"real one moved; speed {m.generated_speed:.1f} vs real {m.real_speed:.1f} px/frame "
                    f"({m.speed_ratio:.2f}×)"
                )
        return "\n".join(lines)


def held_actions(names: Sequence[str], button: str, frames: int) -> np.ndarray:
    """(frames, A) float32: ``button`` held, nothing else."""
    if button not in names:
        raise InputError(f"the button {button!r} is not one of the actions {list(names)}")
    actions = np.zeros((frames, len(names)), dtype=np.float32)
    actions[:, list(names).index(button)] = 1.0
    return actions


def replay_branch(
    open_engine: Callable[[], Any],
    seed: int,
    actions: np.ndarray,
    expected: np.ndarray,
    held: np.ndarray,
) -> np.ndarray:
    """Replay an episode on its engine: reset with ``seed``, step ``actions`` (T, A), check the frame
    reached against ``expected`` (the dataset's frame T), then step ``held`` (H, A). Returns the
    frames (H + 1, S, S, 3) from the frame reached on (an episode that ends repeats its last frame)."""
    with open_engine() as engine:
        frame = engine.reset(seed)
        for action in actions:
            frame = engine.step(action).frame
        error = np.mean((frame.astype(np.float64) - expected.astype(np.float64)) ** 2)
        if error > 0 and 10 * np.log10(255.0**2 / error) < REPLAY_MIN_PSNR:
            raise InputError(
                f"replaying the episode with seed {seed} on its engine does not reproduce the dataset's frame "
                f"{len(actions)}; the motion check needs a dataset written by `wm-video collect`"
            )
        frames = [frame]
        done = False
        for action in held:
            if not done:
                result = engine.step(action)
                frame, done = result.frame, result.done
            frames.append(frame)
    return np.stack(frames)


# -- the whole check ---------------------------------------------------------------------------------
def evaluate_sprites(
    tokenizer: Any,
    cache: Any,
    *,
    game: str,
    train_episodes: Sequence[int],
    episodes: Sequence[int],
    max_frames: int | None = None,
    world: Any = None,
    open_engine: Callable[[], Any] | None = None,
    engine_seed: int = 0,
    clips: int = 16,
    context: int = 4,
    horizon: int = 8,
    seed: int = 0,
    stop: Callable[[], bool] | None = None,
    strip: Path | None = None,
) -> SpriteReport:
    """Presence in ``episodes`` (held-out) and in ``tokenizer``'s reconstructions of them; with a
    ``world`` (a :class:`~wm_video.engine.World` of batch ``clips``) and the dataset's engine
    (``open_engine``; episode i replays from ``engine_seed + i``), the motion check too, and with
    ``strip`` a PNG of its first branch per button: the real engine's frames above the world's. Without
    the motion check, the strip shows the first :data:`STRIP_FRAMES` held-out frames with a sprite
    other than the player (the ball) above the tokenizer's reconstructions of them (the first frames
    when none shows one).

    The detector's background is the median of ``train_episodes``.
    """
    import time

    from wm_video.data.background import median_frame
    from wm_video.eval.clips import check_stop
    from wm_video.eval.tokenizer import reconstruct_episode

    started = time.perf_counter()
    detector = fit_detector(median_frame(cache, train_episodes), game)
    position = {int(e): i for i, e in enumerate(cache.episode_indices.tolist())}
    counts: dict[str, KeptCount] = {}
    real_seen = {s.name: 0 for s in detector.sprites}
    total = 0
    small = [s for s in detector.sprites if s is not detector.player] or list(detector.sprites)
    shown: list[
        tuple[np.ndarray, np.ndarray]
    ] = []  # (real, reconstruction) with a small sprite, for the strip
    first: list[tuple[np.ndarray, np.ndarray]] = []  # the first frames, when no frame shows one
    for episode in episodes:
        check_stop(stop)
        frames = np.asarray(cache.episode(position[int(episode)])[0][:max_frames])
        reconstruction = reconstruct_episode(tokenizer, frames)
        add_counts(counts, kept(detector, frames, reconstruction))
        present = {sprite.name: detector.present(frames, sprite) for sprite in detector.sprites}
        for name, seen in present.items():
            real_seen[name] += int(seen.sum())
        total += len(frames)
        if strip is not None and len(shown) < STRIP_FRAMES:
            with_small = np.flatnonzero(np.any([present[s.name] for s in small], axis=0))
            shown += [(frames[t], reconstruction[t]) for t in with_small[: STRIP_FRAMES - len(shown)]]
            first += [
                (frames[t], reconstruction[t]) for t in range(min(len(frames), STRIP_FRAMES - len(first)))
            ]
    report = SpriteReport(
        game=game,
        frames=total,
        real_rates={name: seen / max(total, 1) for name, seen in real_seen.items()},
        tokenizer=counts,
    )
    player = detector.player
    if world is not None and open_engine is not None and player is not None:
        rows = _motion(
            report,
            detector,
            player,
            world,
            cache,
            episodes,
            open_engine,
            engine_seed,
            clips,
            context,
            horizon,
            seed,
            stop,
        )
        if strip is not None:
            from wm_video.fileio import atomic_write_png

            atomic_write_png(strip, strip_image(rows))
            report.strip = "per button: the real engine above, the world below"
    if strip is not None and not report.strip and first:
        from wm_video.fileio import atomic_write_png

        names = " or ".join(s.name for s in small)
        what = f"with the {names}" if shown else f"(none shows the {names})"
        pairs = shown or first
        atomic_write_png(
            strip, strip_image([np.stack([r for r, _ in pairs]), np.stack([g for _, g in pairs])])
        )
        report.strip = (
            f"{len(pairs)} held-out frames {what}: real above, the tokenizer's reconstructions below"
        )
    report.seconds = time.perf_counter() - started
    return report


#: Frames in the tokenizer's strip (real above reconstruction), when there is no motion strip.
STRIP_FRAMES = 8


def strip_image(rows: Sequence[np.ndarray], scale: int = 3, gap: int = 2) -> np.ndarray:
    """Rows of frames, each (T, S, S, 3) uint8, as one image: frames side by side, rows stacked,
    white gaps, scaled up ``scale`` times (nearest neighbour, so single pixels stay visible)."""
    length, size = rows[0].shape[0], rows[0].shape[1]
    image = np.full((len(rows) * (size + gap) - gap, length * (size + gap) - gap, 3), 255, np.uint8)
    for r, frames in enumerate(rows):
        for t, frame in enumerate(frames):
            image[r * (size + gap) : r * (size + gap) + size, t * (size + gap) : t * (size + gap) + size] = (
                frame
            )
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def _motion(
    report: SpriteReport,
    detector: SpriteDetector,
    player: Sprite,
    world: Any,
    cache: Any,
    episodes: Sequence[int],
    open_engine: Callable[[], Any],
    engine_seed: int,
    clips: int,
    context: int,
    horizon: int,
    seed: int,
    stop: Callable[[], bool] | None,
) -> list[np.ndarray]:
    """Fills ``report.motion`` and ``report.generated_rates``; returns the first branch of each button
    as rows (real, generated) of (horizon + 1) frames."""
    from wm_video.data.sampler import ClipSampler
    from wm_video.eval.clips import check_stop

    picked = ClipSampler(cache, context, seed=seed, episodes=list(episodes)).sample_batch(clips)
    names = tuple(cache.action_names)
    position = {int(e): i for i, e in enumerate(cache.episode_indices.tolist())}
    axis = 0 if player.axis == "x" else 1
    generated_seen = {s.name: 0 for s in detector.sprites}
    generated_total = 0
    rows: list[np.ndarray] = []
    for button in player.buttons:
        held = held_actions(names, button, horizon)
        real = []
        for b in range(clips):
            check_stop(stop)
            episode, start = int(picked.episode[b]), int(picked.start[b])
            frames, actions = cache.episode(position[episode])
            reached = start + context - 1
            real.append(
                replay_branch(open_engine, engine_seed + episode, actions[:reached], frames[reached], held)
            )
        real_frames = np.stack(real)  # (B, H + 1, S, S, 3)
        shown = world.reset(picked.frames, picked.actions[:, : context - 1], seed=seed)
        generated = [shown.reshape(clips, *shown.shape[-3:])]
        for _ in range(horizon):
            check_stop(stop)
            generated.append(world.step(np.repeat(held[:1], clips, axis=0)).reshape(clips, *shown.shape[-3:]))
        generated_frames = np.stack(generated, axis=1)  # (B, H + 1, S, S, 3)
        moving, agrees, real_speed, generated_speed = displacement_scores(
            detector.position(real_frames, player), detector.position(generated_frames, player), axis
        )
        report.motion.append(ButtonMotion(button, moving, agrees, real_speed, generated_speed))
        rows += [real_frames[0], generated_frames[0]]
        for sprite in detector.sprites:
            generated_seen[sprite.name] += int(detector.present(generated_frames[:, 1:], sprite).sum())
        generated_total += clips * horizon
    report.generated_rates = {name: seen / generated_total for name, seen in generated_seen.items()}
    report.motion_setup = (
        f"{clips} held-out frames × {horizon} frames with one button held, {player.name} along {player.axis}, "
        "against the real engine from the same state"
    )
    return rows
