"""Checkpoint averaging, as a diagnostic: the uniform weight average of policies one run exported at several steps.

A run exports its deployed policy at every evaluation (`RUN/policies/step<k>`; with an averaged actor that is the
running average, `eval/*`). Late in training a COG run's success swings between evaluations (seed 3 of
cog-state-medium-pushback-long: 0.94, 0.84, 0.72 at 30k, 35k, 40k steps). Averaging the weights of the last few
exports asks whether those swings are noise around one good policy (the average then holds the good one) or moves
to different ones (the average then fails). The result is an ordinary policy folder: evaluate it with
`robot-rl eval OUT --workers 1 --videos 0` (the same evaluation seeds as training's, 1,000,000 + i).

    python experiments/average_policies.py RUN OUT 30000 35000 40000

The policies must share one spec (architecture, observation, state statistics); anything else is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from robot_rl.policy import Policy


def average_policies(folders: list[Path]) -> Policy:
    """The first policy with every floating-point tensor replaced by the mean over all of them (float64 sums)."""
    if not folders:
        raise ValueError("no policies to average")
    policies = [Policy.load(folder) for folder in folders]
    spec = policies[0].spec.to_dict()
    for folder, policy in zip(folders[1:], policies[1:], strict=True):
        if policy.spec.to_dict() != spec:
            raise ValueError(f"{folder} has another spec than {folders[0]}; only one run's policies can be averaged")
    states = [policy.actor.state_dict() for policy in policies]
    mean = {
        key: torch.stack([s[key].double() for s in states]).mean(dim=0).to(value.dtype)
        if value.is_floating_point()
        else value
        for key, value in states[0].items()
    }
    out = policies[0]
    out.actor.load_state_dict(mean)
    out.info = {**out.info, "averaged_from": [str(folder) for folder in folders]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder (its policies/step<k> are averaged)")
    parser.add_argument("out", type=Path, help="policy folder to write")
    parser.add_argument("steps", type=int, nargs="+", help="the exported steps to average, e.g. 30000 35000 40000")
    args = parser.parse_args()
    folders = [args.run / "policies" / f"step{step}" for step in args.steps]
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        parser.error(f"no exported policy at {', '.join(missing)}")
    print(average_policies(folders).save(args.out))


if __name__ == "__main__":
    main()
