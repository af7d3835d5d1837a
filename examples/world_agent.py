"""An agent that learns only inside a world model, then plays the real game.

Trains a small convolutional policy (advantage actor-critic: a policy and a value head, GAE) in a
:class:`~wm_video.envs.WorldVectorEnv` of the shipped default world (ViZDoom *Defend the Center*),
with rewards and episode ends predicted by a reward model (``wm-video train reward``). It never
sees the real engine while it learns. Then it plays the real ViZDoom engine, over the same seeds
as a random policy and the exploration policy that collected the world's training footage, and
prints each one's kills per episode and survival time.

    wm-video train reward --data DATA --out runs/reward      # DATA: ViZDoom footage with ground truth
    nice -n 10 python examples/world_agent.py --reward runs/reward --minutes 15 --threads 1

Actions are a ``Discrete`` choice over a few button combinations (turn, shoot, step forward).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wm_video.actions import ActionSpace
from wm_video.envs import WorldVectorEnv

COMBINATIONS: tuple[list[str], ...] = (
    [],
    ["attack"],
    ["turn_left"],
    ["turn_right"],
    ["turn_left", "attack"],
    ["turn_right", "attack"],
    ["forward"],
    ["forward", "attack"],
)


class Agent(nn.Module):
    """uint8 frames (B, H, W, 3) → action logits (B, K) and a value (B,)."""

    def __init__(self, actions: int, input_size: int = 32) -> None:
        super().__init__()
        self.input_size = input_size
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * (input_size // 8) ** 2, 128), nn.ReLU(),
        )  # fmt: skip
        self.policy, self.value = nn.Linear(128, actions), nn.Linear(128, 1)

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        x = frames.float().div(255.0).permute(0, 3, 1, 2)  # (B, 3, H, W)
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="area")
        h = self.features(x)
        return self.policy(h), self.value(h).squeeze(1)

    @torch.no_grad()
    def act(self, frames: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        logits, _ = self(torch.from_numpy(np.asarray(frames)))
        return torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1).numpy()


@dataclass
class TrainLog:
    iterations: int
    frames: int
    seconds: float
    episodes: int  # finished inside the world
    mean_return: list[float]  # per iteration: mean reward per finished episode (NaN: none finished)


def train_agent(
    envs: WorldVectorEnv,  # with a Discrete action space
    agent: Agent,
    *,
    iterations: int,
    minutes: float | None = None,
    horizon: int = 32,
    gamma: float = 0.99,
    lam: float = 0.95,
    lr: float = 5e-4,
    entropy: float = 0.01,
    seed: int = 0,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> TrainLog:
    """Advantage actor-critic in ``envs`` for ``iterations`` rollouts of ``horizon`` steps (or ``minutes``)."""
    optimizer = torch.optim.Adam(agent.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    obs, _ = envs.reset(seed=seed)
    count = envs.num_envs
    restarting = np.zeros(count, bool)  # NEXT_STEP autoreset: the step after an end only restarts
    running, finished, returns_log = np.zeros(count), [], []
    started, frames, done_iterations = time.perf_counter(), 0, 0
    for iteration in range(iterations):
        if minutes is not None and time.perf_counter() - started > minutes * 60:
            break
        batch_obs, batch_act, batch_rew, batch_end, batch_valid = [], [], [], [], []
        ended_now: list[float] = []
        for _ in range(horizon):
            actions = agent.act(obs, generator)
            next_obs, reward, terminated, truncated, _ = envs.step(actions)
            batch_obs.append(obs)
            batch_act.append(actions)
            batch_rew.append(reward)
            batch_end.append(terminated | truncated)
            batch_valid.append(~restarting)
            running += np.where(restarting, 0.0, reward)
            for i in np.flatnonzero(terminated | truncated):
                ended_now.append(float(running[i]))
                running[i] = 0.0
            restarting = terminated | truncated
            obs = next_obs
            frames += count
        finished += ended_now
        observations = torch.from_numpy(np.stack(batch_obs)).flatten(0, 1)  # (H·B, S, S, 3)
        logits, values = agent(observations)
        values_hb = values.detach().view(horizon, count).numpy()
        with torch.no_grad():
            last_value = agent(torch.from_numpy(obs))[1].numpy()
        rewards, ends, valid = (np.stack(x) for x in (batch_rew, batch_end, batch_valid))
        advantages, gae = np.zeros((horizon, count), np.float32), np.zeros(count, np.float32)
        for t in reversed(range(horizon)):
            following = last_value if t == horizon - 1 else values_hb[t + 1]
            keep = 1.0 - ends[t]
            delta = rewards[t] + gamma * following * keep - values_hb[t]
            gae = np.where(valid[t], delta + gamma * lam * keep * gae, 0.0)
            advantages[t] = gae
        targets = torch.from_numpy(advantages + values_hb).flatten()
        adv = torch.from_numpy(advantages).flatten()
        mask = torch.from_numpy(valid).flatten().float()
        adv = (adv - adv[mask > 0].mean()) / (adv[mask > 0].std() + 1e-6) if mask.sum() > 1 else adv
        log_probs = logits.log_softmax(1)
        taken = log_probs.gather(1, torch.from_numpy(np.stack(batch_act)).flatten()[:, None]).squeeze(1)
        spread = -(log_probs.exp() * log_probs).sum(1)
        loss = (-(taken * adv) - entropy * spread + 0.5 * (values - targets) ** 2) * mask
        optimizer.zero_grad()
        (loss.sum() / mask.sum().clamp(min=1)).backward()
        nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
        optimizer.step()
        done_iterations += 1
        mean = float(np.mean(ended_now)) if ended_now else float("nan")
        returns_log.append(mean)
        if iteration % 10 == 0:
            recent = finished[-50:]
            log(
                f"iteration {iteration}: {frames:,} world frames, {len(finished)} episodes, "
                f"mean return of the last {len(recent)} {np.mean(recent) if recent else float('nan'):+.2f}, "
                f"entropy {float(spread.detach().mean()):.2f}, {frames / (time.perf_counter() - started):.1f} frames/s"
            )
    return TrainLog(done_iterations, frames, time.perf_counter() - started, len(finished), returns_log)


@dataclass
class RealScore:
    policy: str
    kills: list[int]  # per episode
    frames: list[int]  # survival: frames until death, or the step limit
    died: list[bool]

    def summary(self) -> str:
        return (
            f"{self.policy:<10} kills/episode {np.mean(self.kills):5.2f} ± {np.std(self.kills):4.2f}   "
            f"survival {np.mean(self.frames):6.1f} frames (median {np.median(self.frames):.0f})   "
            f"died in {sum(self.died)}/{len(self.died)}"
        )


def play_real(
    name: str,
    choose: Callable[[np.ndarray], np.ndarray],
    reset: Callable[[int], object],
    *,
    scenario: str,
    size: int,
    seeds: Sequence[int],
    steps: int,
) -> RealScore:
    """Play the real ViZDoom engine: ``choose(frame) -> action vector`` over ``seeds``."""
    from wm_video.sources import make_source

    score = RealScore(name, [], [], [])
    with make_source("vizdoom", scenario=scenario, size=size) as engine:
        for seed in seeds:
            frame, kills, died, t = engine.reset(seed), 0, False, 0
            reset(seed)
            for t in range(1, steps + 1):  # noqa: B007 - t is the survival time after the loop
                result = engine.step(choose(frame))
                kills += int(result.reward > 0)
                frame = result.frame
                if result.done:
                    died = True
                    break
            score.kills.append(kills)
            score.frames.append(t)
            score.died.append(died)
    return score


def compare_in_real_game(
    agent: Agent,
    space: ActionSpace,
    *,
    scenario: str,
    size: int,
    seeds: Sequence[int],
    steps: int,
    combinations: Sequence[Sequence[str]] = COMBINATIONS,
) -> list[RealScore]:
    """The agent, a random policy and the exploration policy on the same seeds of the real game."""
    from wm_video.sources.policies import ExplorationPolicy, RandomPolicy

    vectors = np.stack([space.from_pressed(names) for names in combinations])
    generator = torch.Generator()
    scores = [
        play_real(
            "agent",
            lambda frame: vectors[int(agent.act(frame[None], generator)[0])],
            lambda seed: generator.manual_seed(seed),
            scenario=scenario,
            size=size,
            seeds=seeds,
            steps=steps,
        )  # fmt: skip
    ]
    for name, policy in (("random", RandomPolicy(space)), ("explore", ExplorationPolicy(space))):
        scores.append(
            play_real(name, policy.act, policy.reset, scenario=scenario, size=size, seeds=seeds, steps=steps)
        )
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="see the module docstring")
    parser.add_argument("--checkpoint", type=Path, default=None, help="the world (default: the shipped one)")
    parser.add_argument(
        "--reward", type=Path, required=True, help="reward model folder (wm-video train reward)"
    )
    parser.add_argument(
        "--event-threshold",
        type=float,
        default=None,
        help="how likely a kill must be for the reward model to give it (default: its calibrated threshold, "
        "chosen on real frames; generated frames are blurrier)",
    )
    parser.add_argument(
        "--start-from", default=None, help="starts: a dataset folder, image… (default: the world's)"
    )
    parser.add_argument("--envs", type=int, default=8, help="worlds stepped together (default 8)")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time budget (default 15)")
    parser.add_argument("--iterations", type=int, default=100_000, help="most rollouts of --horizon steps")
    parser.add_argument("--horizon", type=int, default=32, help="steps per rollout and world (default 32)")
    parser.add_argument(
        "--max-steps", type=int, default=300, help="steps of an episode inside the world (default 300)"
    )
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4)")
    parser.add_argument("--eval-episodes", type=int, default=10, help="real episodes per policy (default 10)")
    parser.add_argument(
        "--eval-steps", type=int, default=500, help="most frames of a real episode (default 500)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed; real episodes use seeds 1000 + i")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the agent's weights and the scores"
    )
    args = parser.parse_args(argv)

    from wm_video.envs.reward import load_reward

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    reward = load_reward(args.reward)
    if args.event_threshold is not None:
        reward.event_threshold = args.event_threshold
    envs = WorldVectorEnv(
        args.envs, args.checkpoint, action_type="discrete", combinations=COMBINATIONS, reward=reward,
        start=args.start_from, max_steps=args.max_steps,
    )  # fmt: skip
    agent = Agent(len(COMBINATIONS))
    trained = train_agent(envs, agent, iterations=args.iterations, minutes=args.minutes, horizon=args.horizon,
                          lr=args.lr, seed=args.seed)  # fmt: skip
    print(
        f"trained {trained.iterations} iterations, {trained.frames:,} world frames in {trained.seconds / 60:.1f} min "
        f"({trained.frames / trained.seconds:.1f} frames/s), {trained.episodes} episodes finished in the world"
    )
    world = envs.world
    source = world.meta.get("shipped", {}).get("source") or {}
    scenario = source.get("scenario") or "defend_the_center"
    seeds = [1000 + i for i in range(args.eval_episodes)]
    scores = compare_in_real_game(
        agent,
        world.action_space,
        scenario=scenario,
        size=world.image_size,
        seeds=seeds,
        steps=args.eval_steps,
    )
    print(f"real ViZDoom {scenario}, seeds {seeds[0]}..{seeds[-1]}, at most {args.eval_steps} frames:")
    for score in scores:
        print("  " + score.summary())
    if args.out is not None:
        from wm_video.fileio import atomic_write_json, write_safetensors

        args.out.mkdir(parents=True, exist_ok=True)
        write_safetensors(args.out / "agent.safetensors", agent.state_dict())
        atomic_write_json(
            args.out / "scores.json",
            {
                "train": asdict(trained),
                "real": [asdict(s) for s in scores],
                "args": {k: str(v) for k, v in vars(args).items()},
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
