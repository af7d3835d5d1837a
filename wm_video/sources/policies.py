"""Who holds the controller while footage is collected.

Design choices:
- Policies see only frames and return action vectors, so they work on any source; they are
  reproducible for a seed (a numpy Generator created in ``reset``).
- A uniform random walk mostly stares at walls, and the model can only learn what the
  footage shows. :class:`ExplorationPolicy` therefore holds an *intent* for a geometric
  number of steps: advance (forward, turning in bursts), strafe, turn in place, or back off.
  The turn direction has momentum (it flips only sometimes at a new intent), so paths arc
  through rooms instead of jittering. Attack and use are pressed now and then. A stuck
  detector watches the frames: if consecutive frames barely differ for a few steps, it backs
  off and turns away. It compares column means, not pixels: walking into a wall, Doom's view
  bob moves the image up and down (pixel differences of 2-8 on a close wall texture) while
  column means stay put (< 1); moving or turning changes them by 2 or more.
- Buttons are looked up by NAME: FPS names (forward, turn_left, ...; see sources/vizdoom.py)
  get the intents above, joystick names (up, down, left, right, fire; sources/atari.py)
  get held directions with fire, anything else falls back to sticky uniform presses.
- :class:`HuntPolicy` also reads what the engine knows about the frame (the object table of
  :mod:`wm_video.sources.truth`, boxes in output pixels): it turns toward the tallest monster in
  view (the nearest, roughly), holds attack once it is near the centre, and in between strafes,
  advances, backs off or holds its fire for a while, so footage shows monsters approach, get
  shot and die, and the player get hit. With no monster in view it explores (turning first
  toward the side where it last saw one). Policies that read the truth say so (``needs_truth``)
  and are handed it by ``act(frame, truth)``; the others ignore it.
- :class:`MixPolicy` (``mix:hunt=0.6,explore=0.4``) draws one policy per episode from the
  episode's seed (its own stream, apart from the policy's) and names it in ``current``.
- :class:`ScriptedPolicy` replays a JSONL file, one object per step:
  ``{"buttons": ["forward", "turn_left"], "deltas": {"mouse_dx": 3.0}}`` ("deltas" optional).
  The whole file is checked when loaded; errors name the file and line.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wm_video.actions import ActionSpace
from wm_video.errors import InputError

if TYPE_CHECKING:
    from wm_video.sources.truth import FrameTruth

_FPS_NEEDS = frozenset({"forward", "turn_left", "turn_right"})
_JOYSTICK = ("up", "down", "left", "right")


class Policy(ABC):
    """Chooses one action vector per frame."""

    #: True when ``act`` needs the engine's ground truth of the frame (ViZDoom's object table).
    needs_truth: bool = False
    #: The spec this policy was loaded from ("explore", "hunt", a script's path), set by load_policy.
    spec: str = ""

    @abstractmethod
    def reset(self, seed: int) -> None:
        """Start a new episode, reproducible for ``seed``."""

    @abstractmethod
    def act(self, frame: np.ndarray, truth: FrameTruth | None = None) -> np.ndarray:
        """The action (float32 vector in the policy's space) to take at ``frame`` (H, W, 3) uint8;
        ``truth`` is what the engine knows about that frame (read only where ``needs_truth``)."""

    @property
    def current(self) -> str:
        """The policy playing this episode (a mix names the one it drew)."""
        return self.spec

    @property
    def exhausted(self) -> bool:
        """True once the policy has no more actions to give (a finished script)."""
        return False


@dataclass(frozen=True)
class ExplorationConfig:
    """Knobs of the exploration policy (steps are recorded frames)."""

    #: Mean number of steps an advance or strafe intent is held (turns and back-offs last half as long).
    mean_intent_steps: float = 12.0
    #: Relative chances of the next intent: advance (forward), strafe, turn in place, back off.
    advance_weight: float = 0.65
    strafe_weight: float = 0.12
    turn_weight: float = 0.13
    back_weight: float = 0.10
    #: Fraction of advancing steps spent turning, in bursts of mean_turn_steps.
    turn_fraction: float = 0.3
    mean_turn_steps: float = 4.0
    #: Chance that a new intent turns the other way (lower = more momentum).
    flip_turn_prob: float = 0.25
    #: Per-step chances of pressing attack / use (joystick sources: fire, per intent).
    attack_prob: float = 0.04
    use_prob: float = 0.03
    #: Stuck when consecutive frames' column means (0-255 scale; blind to view bob) differ by
    #: less than stuck_threshold on average for stuck_steps steps; then back off for
    #: escape_back_steps and turn in place for about escape_turn_steps (uniform in ½× to 1½×;
    #: ViZDoom at frame_skip 2 turns about 7° per step).
    stuck_threshold: float = 1.2
    stuck_steps: int = 3
    escape_back_steps: int = 3
    escape_turn_steps: int = 16

    def __post_init__(self) -> None:
        weights = (self.advance_weight, self.strafe_weight, self.turn_weight, self.back_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise InputError(f"intent weights must be ≥ 0 and not all 0; got {weights}")
        for name in ("mean_intent_steps", "mean_turn_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} is a mean number of steps, at least 1; got {getattr(self, name)}")
        for name in ("turn_fraction", "flip_turn_prob", "attack_prob", "use_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} is a probability in [0, 1]; got {getattr(self, name)}")
        if self.stuck_steps < 1 or self.escape_back_steps < 0 or self.escape_turn_steps < 1:
            raise InputError(
                "stuck_steps ≥ 1, escape_back_steps ≥ 0 and escape_turn_steps ≥ 1 are required; got "
                f"{self.stuck_steps}, {self.escape_back_steps}, {self.escape_turn_steps}"
            )
        if self.stuck_threshold < 0:
            raise InputError(
                f"stuck_threshold is a mean difference ≥ 0 (0 disables it); got {self.stuck_threshold}"
            )


class RandomPolicy(Policy):
    """Sticky uniform presses: each button pressed with probability 1/2, held for a geometric time."""

    def __init__(self, space: ActionSpace, mean_hold_steps: float = 4.0) -> None:
        if mean_hold_steps < 1:
            raise InputError(f"mean_hold_steps must be at least 1; got {mean_hold_steps}")
        self.space = space
        self.mean_hold_steps = mean_hold_steps
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._held = self.space.zeros()
        self._left = 0

    def act(self, frame: np.ndarray, truth: FrameTruth | None = None) -> np.ndarray:
        if self._left <= 0:
            self._held = self.space.zeros()
            self._held[: len(self.space.buttons)] = self._rng.random(len(self.space.buttons)) < 0.5
            self._left = int(self._rng.geometric(1.0 / self.mean_hold_steps))
        self._left -= 1
        return self._held.copy()


class ExplorationPolicy(Policy):
    """Momentum-driven intents that cover the map (see module docstring)."""

    def __init__(self, space: ActionSpace, config: ExplorationConfig | None = None) -> None:
        self.space = space
        self.config = config or ExplorationConfig()
        names = set(space.buttons)
        if _FPS_NEEDS <= names:
            self.mode = "fps"
        elif names <= set(_JOYSTICK) | {"fire"} and names & set(_JOYSTICK):
            self.mode = "joystick"
        else:
            self.mode = "random"
        self._fallback = RandomPolicy(space)
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._fallback.reset(seed)
        self._previous: np.ndarray | None = None
        self._still_steps = 0
        self._intent = "advance"
        self._intent_left = 0
        self._turn = "turn_left" if self._rng.random() < 0.5 else "turn_right"
        self._turning_left = 0
        self._strafe = "strafe_left"
        self._escape_turn_steps = 0
        self._joystick: set[str] = set()

    def _hold(self, mean: float) -> int:
        return int(self._rng.geometric(1.0 / max(mean, 1.0)))

    def _is_stuck(self, frame: np.ndarray) -> bool:
        # Column means (W, 3): Doom's view bob shifts the image up and down while the player
        # walks into a wall, which changes pixels but hardly changes column means.
        profile = np.asarray(frame, dtype=np.float32).mean(axis=0)
        if self._previous is not None and self._previous.shape == profile.shape:
            change = float(np.abs(profile - self._previous).mean())
            self._still_steps = self._still_steps + 1 if change < self.config.stuck_threshold else 0
        self._previous = profile
        return self._still_steps >= self.config.stuck_steps

    def _new_intent(self) -> None:
        cfg, names = self.config, set(self.space.buttons)
        choices = ["advance", "strafe", "turn", "back"]
        weights = np.array([cfg.advance_weight, cfg.strafe_weight, cfg.turn_weight, cfg.back_weight])
        if not {"strafe_left", "strafe_right"} <= names:
            weights[1] = 0.0
        if "back" not in names:
            weights[3] = 0.0
        if weights.sum() <= 0:  # only turning is left
            weights[2] = 1.0
        self._intent = str(self._rng.choice(choices, p=weights / weights.sum()))
        if self._rng.random() < cfg.flip_turn_prob:
            self._turn = "turn_right" if self._turn == "turn_left" else "turn_left"
        self._strafe = "strafe_left" if self._rng.random() < 0.5 else "strafe_right"
        long_intent = self._intent in ("advance", "strafe")
        self._intent_left = self._hold(cfg.mean_intent_steps if long_intent else cfg.mean_intent_steps / 2)

    def _escape(self) -> None:
        """Back off (when possible), then turn in place away from the obstacle."""
        cfg = self.config
        self._intent = "escape"
        self._escape_turn_steps = int(
            self._rng.integers(cfg.escape_turn_steps // 2, cfg.escape_turn_steps * 3 // 2 + 1)
        )
        self._intent_left = cfg.escape_back_steps + max(self._escape_turn_steps, 1)
        if self._rng.random() < 0.5:
            self._turn = "turn_right" if self._turn == "turn_left" else "turn_left"
        self._still_steps = 0

    def _fps_buttons(self) -> set[str]:
        cfg, names = self.config, set(self.space.buttons)
        pressed: set[str] = set()
        if self._intent == "advance":
            pressed.add("forward")
            if self._turning_left <= 0 and self._rng.random() < cfg.turn_fraction / cfg.mean_turn_steps:
                self._turning_left = self._hold(cfg.mean_turn_steps)
            if self._turning_left > 0:
                pressed.add(self._turn)
                self._turning_left -= 1
        elif self._intent == "strafe":
            pressed.add(self._strafe)
            if self._rng.random() < 0.5:
                pressed.add("forward")
        elif self._intent == "turn":
            pressed.add(self._turn)
        elif self._intent == "back":
            pressed |= {"back", self._turn}
        else:  # escape
            backing = self._intent_left > self._escape_turn_steps
            pressed |= {"back", self._turn} if backing else {self._turn}
        if self._rng.random() < cfg.attack_prob:
            pressed.add("attack")
        if self._rng.random() < cfg.use_prob:
            pressed.add("use")
        return pressed & names

    def _joystick_buttons(self, new_intent: bool) -> set[str]:
        if new_intent:
            directions = [name for name in _JOYSTICK if name in self.space.buttons]
            chosen = int(self._rng.integers(len(directions) + 1))  # the extra choice: stand still
            self._joystick = {directions[chosen]} if chosen < len(directions) else set()
            if "fire" in self.space.buttons and self._rng.random() < 0.5:
                self._joystick.add("fire")
        return set(self._joystick)

    def act(self, frame: np.ndarray, truth: FrameTruth | None = None) -> np.ndarray:
        if self.mode == "random":
            return self._fallback.act(frame)
        stuck = self._is_stuck(frame)
        new_intent = self._intent_left <= 0 or (stuck and self._intent != "escape")
        if stuck and self.mode == "fps" and self._intent != "escape":
            self._escape()
        elif new_intent:
            self._new_intent()
            self._still_steps = 0 if stuck else self._still_steps
        self._intent_left -= 1
        pressed = self._fps_buttons() if self.mode == "fps" else self._joystick_buttons(new_intent)
        return self.space.from_pressed(sorted(pressed))


class ScriptedPolicy(Policy):
    """Replays a JSONL action file from its first line at every reset."""

    def __init__(self, path: Path | str, space: ActionSpace) -> None:
        self.path = Path(path)
        self.space = space
        self.actions = _read_script(self.path, space)
        self._next = 0

    def reset(self, seed: int) -> None:
        self._next = 0

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self.actions)

    def act(self, frame: np.ndarray, truth: FrameTruth | None = None) -> np.ndarray:
        """The next scripted action; no buttons once the script is exhausted."""
        if self.exhausted:
            return self.space.zeros()
        self._next += 1
        return self.actions[self._next - 1].copy()


def _read_script(path: Path, space: ActionSpace) -> list[np.ndarray]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read action script ({exc})") from exc
    actions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(entry, dict) or not set(entry) <= {"buttons", "deltas"}:
            raise InputError(
                f'{where}: expected an object like {{"buttons": ["forward"], "deltas": {{}}}}; got {line!r}'
            )
        buttons, deltas = entry.get("buttons", []), entry.get("deltas", {})
        if not isinstance(buttons, list) or not all(isinstance(name, str) for name in buttons):
            raise InputError(f'{where}: "buttons" must be a list of button names; got {buttons!r}')
        if not isinstance(deltas, dict) or not all(
            isinstance(value, int | float) and not isinstance(value, bool) for value in deltas.values()
        ):
            raise InputError(f'{where}: "deltas" must map delta names to numbers; got {deltas!r}')
        try:
            actions.append(space.from_pressed(buttons, deltas))
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from exc
    if not actions:
        raise InputError(f"{path}: the action script has no steps (expected one JSON object per line)")
    return actions


class MixPolicy(Policy):
    """One of several policies per episode, drawn from the episode's seed by weight."""

    def __init__(self, policies: dict[str, Policy], weights: dict[str, float]) -> None:
        self.policies = policies
        self.names = list(policies)
        total = sum(weights[name] for name in self.names)
        self.weights = np.array([weights[name] / total for name in self.names])
        self.needs_truth = any(policy.needs_truth for policy in policies.values())
        self.reset(0)

    def reset(self, seed: int) -> None:
        # Its own stream (salted), so the draw does not shift the chosen policy's randomness.
        draw = np.random.default_rng([_MIX_SALT, seed])
        self._chosen = self.names[int(draw.choice(len(self.names), p=self.weights))]
        self.policies[self._chosen].reset(seed)

    @property
    def current(self) -> str:
        return self._chosen

    @property
    def exhausted(self) -> bool:
        return self.policies[self._chosen].exhausted

    def act(self, frame: np.ndarray, truth: FrameTruth | None = None) -> np.ndarray:
        return self.policies[self._chosen].act(frame, truth)


#: Policies named by a word; anything else is the path of a JSONL action script.
POLICY_NAMES = ("explore", "random", "hunt")
_MIX_PREFIX = "mix:"
_MIX_SALT = 0x6D6978  # "mix"
_SPEC_HELP = (
    "'explore', 'random', 'hunt', the path of a JSONL action file, or a per-episode mix like "
    "'mix:hunt=0.6,explore=0.4'"
)


def parse_policy_spec(spec: str) -> dict[str, float]:
    """The policies a spec names with their weights (summing to 1): one policy at weight 1, or a mix.

    Raises InputError on an unknown policy, a missing file, or a bad weight."""
    if not spec.startswith(_MIX_PREFIX):
        _check_policy_name(spec)
        return {spec: 1.0}
    weights: dict[str, float] = {}
    for part in spec[len(_MIX_PREFIX) :].split(","):
        name, equals, weight_text = part.strip().rpartition("=")
        name = name.strip()
        if not equals or not name:
            raise InputError(f"policy mix {spec!r}: expected name=weight, got {part.strip()!r}; {_SPEC_HELP}")
        try:
            weight = float(weight_text)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            raise InputError(f"policy mix {spec!r}: the weight of {name!r} must be a number ≥ 0; got {weight_text!r}")
        if name in weights:
            raise InputError(f"policy mix {spec!r}: {name!r} is named twice")
        if name.startswith(_MIX_PREFIX):
            raise InputError(f"policy mix {spec!r}: a mix cannot hold another mix")
        _check_policy_name(name)
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise InputError(f"policy mix {spec!r}: at least one weight must be above 0")
    return {name: weight / total for name, weight in weights.items() if weight > 0}


def _check_policy_name(name: str) -> None:
    if name not in POLICY_NAMES and not Path(name).is_file():
        raise InputError(f"policy must be {_SPEC_HELP}; {name!r} is none of these")


def policy_needs_truth(spec: str) -> bool:
    """Whether the policy (or any policy of the mix) ``spec`` names reads the engine's ground truth."""
    return "hunt" in parse_policy_spec(spec)


def _single_policy(name: str, space: ActionSpace) -> Policy:
    policy: Policy
    if name == "explore":
        policy = ExplorationPolicy(space)
    elif name == "random":
        policy = RandomPolicy(space)
    elif name == "hunt":
        from wm_video.sources.hunt import HuntPolicy  # hunt.py builds on this module

        policy = HuntPolicy(space)
    else:
        policy = ScriptedPolicy(Path(name), space)
    policy.spec = name
    return policy


def load_policy(spec: str, space: ActionSpace) -> Policy:
    """A policy from its spec: "explore" (default), "random" (sticky uniform presses), "hunt"
    (aims at monsters with the engine's ground truth), the path of a JSONL action script, or
    "mix:NAME=WEIGHT,..." (one of those drawn per episode)."""
    weights = parse_policy_spec(spec)
    if not spec.startswith(_MIX_PREFIX):
        return _single_policy(spec, space)
    mix = MixPolicy({name: _single_policy(name, space) for name in weights}, weights)
    mix.spec = spec
    return mix
