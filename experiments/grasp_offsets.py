"""Where a drawer dataset's grasps close: the x-y distance from the TCP to the object when the gripper is first
commanded closed at the object, and whether the object is lifted after; and how many states hold the open gripper
at grasp height (TCP less than 1 cm above the object's centre), by the same distance.

A grasp counts where the gripper command turns positive with the gripper open (gap above 50 mm), the TCP less than
5 cm from the object in x-y and less than 2 cm above its centre; lifted means the object rises more than 2 cm later
in the episode. Reads the state (TCP x, y, z, yaw, finger gap) and the privileged object position of every episode
from the dataset's HDF5 file. A learnt policy that arrives further off than any grasp in its data has nothing to
imitate there (README, "Closed drawer on v1").

    python experiments/grasp_offsets.py DATASET [DATASET ...]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from robot_rl.data.episodes import DatasetError, iter_episodes

BINS_MM = (0, 5, 10, 15, 20, 25, 50)


def grasps(folder: Path) -> tuple[int, list[tuple[float, bool]], list[float]]:
    """(episodes, [(x-y offset in metres where the grasp closes, lifted after)] for each episode with a grasp,
    the x-y offsets of every state with the gripper open at grasp height)."""
    found, low_open, episodes = [], [], 0
    for _, group in iter_episodes(folder, keys=("state", "privileged")):
        episodes += 1
        state, obj, actions = (
            group["observations/state"][:],
            group["observations/privileged"][:, :3],
            group["actions"][:],
        )
        steps = len(actions)
        offset = np.hypot(*(state[:steps, :2] - obj[:steps, :2]).T)
        height = state[:steps, 2] - obj[:steps, 2]
        low_open.extend(offset[(height < 0.01) & (state[:steps, 4] > 0.05)].tolist())
        closing = np.flatnonzero((actions[:, 4] > 0) & (offset < 0.05) & (height < 0.02) & (state[:steps, 4] > 0.05))
        if len(closing):
            k = int(closing[0])
            found.append((float(offset[k]), bool((obj[k + 1 :, 2] - obj[k, 2]).max() > 0.02)))
    return episodes, found, low_open


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="+", type=Path, help="dataset folders (datasets/<name>-v<N>)")
    args = parser.parse_args()
    for folder in args.datasets:
        try:
            episodes, found, low_open = grasps(folder)
        except (DatasetError, KeyError) as error:  # KeyError: no privileged state recorded
            parser.error(f"{folder}: cannot read its grasps: {error!r}")
        offsets, low = np.array([1000 * o for o, _ in found]), 1000 * np.array(low_open)
        lifted = np.array([ok for _, ok in found], dtype=bool)
        share = f"{lifted.mean():.2f}" if len(found) else "none"
        print(f"{folder}: {episodes} episodes, {len(found)} close at the object, {share} of them lift it")
        for lo, hi in itertools.pairwise(BINS_MM):
            inside = (offsets >= lo) & (offsets < hi)
            rate = f"{lifted[inside].mean():.2f}" if inside.any() else "-"
            states = int(((low >= lo) & (low < hi)).sum())
            line = f"  {lo:2d}-{hi:2d} mm from the object in x-y: closes {inside.sum():5d} (lifted {rate})"
            print(f"{line}, open at grasp height {states:6d}")


if __name__ == "__main__":
    main()
