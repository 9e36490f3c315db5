"""Checkpoint averaging, as a diagnostic: the uniform weight average of policies one run exported at several steps.

A run exports its deployed policy at every evaluation (`RUN/policies/step<k>`; with an averaged actor that is the
running average, `eval/*`). Late in training a COG run's success swings between evaluations (seed 3 of
cog-state-medium-pushback-long: 0.94, 0.84, 0.72 at 30k, 35k, 40k steps). Averaging the weights of the last few
exports asks whether those swings are noise around one good policy (the average then holds the good one) or moves
to different ones (the average then fails). The result is an ordinary policy folder: evaluate it with
`robot-rl eval OUT --workers 1 --videos 0` (the same evaluation seeds as training's, 1,000,000 + i).

    python experiments/average_policies.py RUN OUT 30000 35000 40000

The policies must share one spec (architecture, observation, state statistics); anything else is refused. Training
does this itself with `average_exports` (`OfflineConfig`): the run then deploys and evaluates the average.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robot_rl.policy import Policy, average_policies


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
    try:
        average = average_policies([Policy.load(f) for f in folders], {"averaged_from": [str(f) for f in folders]})
    except ValueError as error:
        parser.error(str(error))
    print(average.save(args.out))


if __name__ == "__main__":
    main()
