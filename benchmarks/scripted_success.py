"""Success rate of every scripted skill and chained solution, each from its own initial condition.

Each skill runs `--episodes` seeded episodes (seeds 0..N-1) at Gaussian action noise `--noise` (COG: 0.1), from the
initial condition listed in `sim_envs.skills.SKILLS`; success is the skill's own predicate at the episode's last
step (for chains and task-level skills this is the task's success). Episodes run without image rendering, which
does not change the physics. Work is split over `--workers` processes. `--approach-errors E...` adds a row for each
grasp (`sim_envs.skills.GRASPS`) at each approach error (metres: the descent aims beside the object and corrects at
grasp height), named `<grasp>@<E>`; `--skills` runs only the named skills.

    python benchmarks/scripted_success.py [--out FILE.json] [--episodes 100] [--noise 0.1] [--workers 2]
        [--skills NAME ...] [--approach-errors E ...]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sim_envs.env import ManipulationEnv
from sim_envs.skills import GRASPS, SKILLS, run_skill_episode

# The reference (roboverse's scripted policies, COG's data) as measured by the issue.
REFERENCE = {
    "open_bottom_drawer": 0.94,
    "open_then_grasp": 0.97,
    "remove_blocker_open_grasp": 0.70,
    "grasp_from_drawer": 0.63,
    "pick_then_place": 0.88,
    "place_in_tray": 0.98,
}


def run_chunk(skill: str, seeds: list[int], noise: float, approach_error: float = 0.0) -> list[bool]:
    env = ManipulationEnv(SKILLS[skill].scene, include_image=False)
    try:
        return [
            bool(run_skill_episode(env, skill, seed=s, noise=noise, approach_error=approach_error).success)
            for s in seeds
        ]
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scripted_success.json"))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skills", nargs="+", help="default: every goal-directed skill and chain")
    parser.add_argument("--approach-errors", nargs="+", type=float, default=[], metavar="E")
    args = parser.parse_args()

    goal_directed = [name for name in SKILLS if name != "random_exploration"]
    unknown = sorted(set(args.skills or []) - set(goal_directed))
    if unknown:
        parser.error(f"--skills: unknown {unknown}; choose from {goal_directed}")
    if any(not 0 <= e <= 0.05 for e in args.approach_errors):
        parser.error(f"--approach-errors must lie in 0-0.05 m, got {args.approach_errors}")
    chosen = args.skills or goal_directed
    rows = [(s, 0.0) for s in chosen] + [(s, e) for e in args.approach_errors for s in chosen if s in GRASPS]
    seeds = list(range(args.episodes))
    chunks = [seeds[i :: args.workers] for i in range(args.workers)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {
            (row, i): pool.submit(run_chunk, row[0], chunk, args.noise, row[1])
            for row in rows
            for i, chunk in enumerate(chunks)
        }
        outcomes = {row: [ok for i in range(args.workers) for ok in futures[(row, i)].result()] for row in rows}

    results: dict[str, float] = {"episodes_per_skill": args.episodes, "noise": args.noise}
    print(f"{'skill':<28} {'kind':<7} {'start':<18} {'success':>8} {'s.e.':>6} {'reference':>9}")
    for s, error in rows:
        rate = sum(outcomes[(s, error)]) / len(outcomes[(s, error)])
        se = math.sqrt(rate * (1 - rate) / len(outcomes[(s, error)]))
        setting = SKILLS[s]
        kind = "chain" if setting.parts else "single"
        name = f"{s}@{error:g}" if error else s
        results[f"{name}_success_rate"] = round(rate, 4)
        ref = REFERENCE.get(name, "")
        print(f"{name:<28} {kind:<7} {setting.initial_condition:<18} {rate:>8.2f} {se:>6.3f} {ref:>9}")
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} in {results['wall_s']} s")


if __name__ == "__main__":
    main()
