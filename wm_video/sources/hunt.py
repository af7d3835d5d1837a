"""The hunt policy: footage with the fights in it, aimed with the engine's ground truth.

The exploration policy rarely faces a monster and presses attack in 4 % of frames, so a model
trained on its footage seldom sees a monster approach, get shot, bleed and die. This policy reads
the object table of each frame (:mod:`wm_video.sources.truth`: boxes in output pixels) and:

- picks a target: the tallest monster in view (roughly the nearest), kept while it stays in view
  unless another is twice as tall;
- turns toward it while its box centre lies outside a dead zone around the frame's centre, and
  holds attack while the centre lies inside the (wider) fire zone;
- holds an engagement *intent* for a geometric number of steps: aim and fire, strafe or advance
  or back off while firing, or aim and hold fire (monsters then come close and hit the player);
- with no ammo left (the state's ``ammo``), presses attack only now and then: an empty gun does
  not fire, and a model that cannot see the ammo count (no HUD) would learn that attack fires
  at random;
- when the target leaves view, keeps turning toward the side it left for a few steps, then
  explores like :class:`~wm_video.sources.policies.ExplorationPolicy` until a monster shows up.

Deterministic for a seed: all randomness comes from one numpy Generator seeded in ``reset`` (the
explorer has its own, seeded alike), and the truth it reads is itself deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wm_video.actions import ActionSpace
from wm_video.errors import InputError
from wm_video.sources.policies import ExplorationPolicy, Policy
from wm_video.sources.truth import CLASS_ID, OBJECT_COLUMNS, STATE_NAMES

if TYPE_CHECKING:
    from wm_video.sources.truth import FrameTruth

#: Buttons the hunt cannot do without.
HUNT_NEEDS = ("turn_left", "turn_right", "attack")
_ID, _CLASS, _X, _WIDTH, _HEIGHT = (
    OBJECT_COLUMNS.index(name) for name in ("object_id", "class_id", "x", "width", "height")
)
_AMMO = STATE_NAMES.index("ammo")
_INTENTS = ("aim", "strafe", "advance", "back", "hold_fire")


@dataclass(frozen=True)
class HuntConfig:
    """Knobs of the hunt policy (offsets are shares of the frame's width; steps are recorded frames)."""

    #: Turn toward the target while its centre is further than this from the frame's centre
    #: (ViZDoom at frame_skip 2 turns about 7°, ~8 % of the 90° view, per step).
    dead_zone: float = 0.05
    #: Hold attack while the target's centre is within this of the frame's centre.
    fire_zone: float = 0.12
    #: Mean number of steps an engagement intent is held.
    mean_intent_steps: float = 10.0
    #: Relative chances of the engagement intents: aim and fire, strafe / advance / back off while
    #: firing, aim without firing.
    aim_weight: float = 0.5
    strafe_weight: float = 0.15
    advance_weight: float = 0.1
    back_weight: float = 0.1
    hold_fire_weight: float = 0.15
    #: Steps spent turning toward the side where the target left view before exploring again.
    pursue_steps: int = 10
    #: With no ammo left, the per-step chance of pressing attack at a centred target anyway.
    dry_fire_prob: float = 0.05

    def __post_init__(self) -> None:
        weights = tuple(self.weights_raw)
        if min(weights) < 0 or sum(weights) <= 0:
            raise InputError(f"intent weights must be ≥ 0 and not all 0; got {weights}")
        if not 0.0 <= self.dead_zone <= self.fire_zone <= 0.5:
            raise InputError(
                f"0 ≤ dead_zone ≤ fire_zone ≤ 0.5 (shares of the frame's width) is required; got "
                f"{self.dead_zone}, {self.fire_zone}"
            )
        if not 0.0 <= self.dry_fire_prob <= 1.0:
            raise InputError(f"dry_fire_prob is a probability in [0, 1]; got {self.dry_fire_prob}")
        if self.mean_intent_steps < 1 or self.pursue_steps < 0:
            raise InputError(
                f"mean_intent_steps ≥ 1 and pursue_steps ≥ 0 are required; got "
                f"{self.mean_intent_steps}, {self.pursue_steps}"
            )

    @property
    def weights_raw(self) -> list[float]:
        """Intent weights in :data:`_INTENTS` order."""
        return [self.aim_weight, self.strafe_weight, self.advance_weight, self.back_weight, self.hold_fire_weight]

    @property
    def weights(self) -> np.ndarray:
        """Intent chances in :data:`_INTENTS` order, summing to 1."""
        raw = np.array(self.weights_raw)
        return raw / raw.sum()


class HuntPolicy(Policy):
    """Turns toward monsters and shoots them, with the engine's ground truth (see module docstring)."""

    needs_truth = True

    def __init__(self, space: ActionSpace, config: HuntConfig | None = None) -> None:
        missing = [name for name in HUNT_NEEDS if name not in space.buttons]
        if missing:
            raise InputError(
                f"the hunt policy needs ViZDoom: it turns and shoots (buttons {list(HUNT_NEEDS)}) at the "
                f"monsters the engine's ground truth shows; this source lacks {missing}"
            )
        self.space = space
        self.config = config or HuntConfig()
        self._explorer = ExplorationPolicy(space)
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._explorer.reset(seed)
        self._target: int | None = None
        self._intent = "aim"
        self._intent_left = 0
        self._side = "turn_left"  # where the last target was
        self._pursue_left = 0
        self._strafe = "strafe_left"

    def _choose_target(self, truth: FrameTruth) -> tuple[float, ...] | None:
        monsters = [
            row
            for row in truth.objects
            if row[_CLASS] == CLASS_ID["monster"] and row[_WIDTH] > 0 and row[_HEIGHT] > 0
        ]
        if not monsters:
            self._target = None
            return None
        tallest = max(monsters, key=lambda row: float(row[_HEIGHT]))
        kept = next((row for row in monsters if row[_ID] == self._target), None)
        chosen = kept if kept is not None and 2 * float(kept[_HEIGHT]) >= float(tallest[_HEIGHT]) else tallest
        self._target = int(chosen[_ID])
        return tuple(float(chosen[i]) for i in (_X, _WIDTH))

    def _new_intent(self) -> None:
        self._intent = str(self._rng.choice(_INTENTS, p=self.config.weights))
        self._intent_left = int(self._rng.geometric(1.0 / self.config.mean_intent_steps))
        self._strafe = "strafe_left" if self._rng.random() < 0.5 else "strafe_right"

    def act(self, frame: np.ndarray, truth: FrameTruth | None = None) -> np.ndarray:
        if truth is None:
            raise InputError(
                "the hunt policy needs the engine's ground truth of every frame (the monsters in view); "
                "only ViZDoom sources give it"
            )
        box = self._choose_target(truth)
        if box is None:
            if self._pursue_left > 0:  # the target just left view: turn after it
                self._pursue_left -= 1
                return self.space.from_pressed([self._side])
            self._intent_left = 0  # a fresh intent when the next monster shows up
            return self._explorer.act(frame, truth)
        left, width = box
        width_px = frame.shape[1]
        offset = (left + width / 2 - width_px / 2) / width_px  # < 0: the target is left of centre
        self._side = "turn_left" if offset < 0 else "turn_right"
        self._pursue_left = self.config.pursue_steps
        if self._intent_left <= 0:
            self._new_intent()
        self._intent_left -= 1
        pressed = {self._side} if abs(offset) > self.config.dead_zone else set()
        pressed |= {"strafe": {self._strafe}, "advance": {"forward"}, "back": {"back"}}.get(self._intent, set())
        if self._intent != "hold_fire" and abs(offset) <= self.config.fire_zone:
            loaded = truth.state[_AMMO] > 0 or self._rng.random() < self.config.dry_fire_prob
            pressed |= {"attack"} if loaded else set()
        return self.space.from_pressed(sorted(pressed & set(self.space.buttons)))
