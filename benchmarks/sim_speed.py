"""Simulator speed: env steps/s with 48x48 image observations, and reset time, for each scene.

Single process, one environment, actions from the scene's scripted chained solution at noise 0.1 (so the arm
pushes drawers and grasps objects as in collected data). Step timing covers `env.step` alone, not the scripted
policy; reset timing covers `env.reset` alone. pybullet is single-threaded and no torch is involved, so no thread
settings apply. Repeats are run back to back; the table and JSON give medians over repeats.

    python benchmarks/sim_speed.py [--out FILE.json] [--steps 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from sim_envs.env import ManipulationEnv
from sim_envs.skills import SKILLS, ScriptedPolicy, make_skill

# Each scene runs its hardest chained solution, cycling through these initial conditions.
WORKLOADS = {
    "drawer": ["open_then_grasp", "close_top_open_grasp", "remove_blocker_open_grasp"],
    "pick_place": ["pick_then_place"],
}
# The reference simulator (roboverse, COG's), as measured on this machine by the issue.
REFERENCE = {"drawer_env_steps_per_s": 80.0, "pick_place_env_steps_per_s": 264.0, "drawer_reset_ms": 220.0}


def measure(scene: str, steps: int, include_image: bool, seed: int) -> tuple[float, list[float]]:
    """Return (env steps per second, list of reset times in ms)."""
    env = ManipulationEnv(scene, image_size=48, include_image=include_image)
    step_time, step_count, resets = 0.0, 0, []
    episode = 0
    while step_count < steps:
        name = WORKLOADS[scene][episode % len(WORKLOADS[scene])]
        rng = np.random.default_rng(seed + episode)
        policy = ScriptedPolicy(make_skill(name, rng), rng, noise=0.1)
        t0 = time.perf_counter()
        env.reset(seed=seed + episode, options={"initial_condition": SKILLS[name].initial_condition})
        resets.append((time.perf_counter() - t0) * 1e3)
        done = False
        while not done and step_count < steps:
            action = policy(env.scene_state())
            t0 = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            step_time += time.perf_counter() - t0
            step_count += 1
            done = terminated or truncated
        episode += 1
    env.close()
    return step_count / step_time, resets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sim_speed.json"))
    parser.add_argument("--steps", type=int, default=3000, help="env steps per scene and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    results: dict[str, float] = {"steps_per_repeat": args.steps, "repeats": args.repeats, "image_size": 48}
    for scene in WORKLOADS:
        for include_image, tag in ((True, ""), (False, "_state_only")):
            rates, resets = [], []
            for r in range(args.repeats):
                rate, reset_ms = measure(scene, args.steps, include_image, seed=1000 * r)
                rates.append(rate)
                resets.extend(reset_ms)
            results[f"{scene}{tag}_env_steps_per_s"] = round(statistics.median(rates), 1)
            if include_image:
                results[f"{scene}_reset_ms"] = round(statistics.fmean(resets), 3)
                results[f"{scene}_reset_ms_median"] = round(statistics.median(resets), 3)
                results[f"{scene}_reset_ms_max"] = round(max(resets), 3)

    print(f"{'metric':<36} {'ours':>10} {'reference':>10}")
    for key, value in results.items():
        ref = REFERENCE.get(key)
        print(f"{key:<36} {value:>10} {'' if ref is None else ref:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
