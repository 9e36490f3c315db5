"""Samplers that turn one or more `TransitionStore`s into training batches (COG's task/prior mix, uniform replay),
and balanced replay for fine-tuning (a sum tree over offline + online transitions, drawn by density-ratio priority).

`mixing` imports the dataset layer; the sum tree and balanced replay are numpy only and exported here.
"""

from robot_rl.replay.balanced import (
    BalancedReplayConfig,
    BalancedSample,
    DensityRatioSampler,
    density_ratio_priorities,
)
from robot_rl.replay.sumtree import SumTree

__all__ = [
    "BalancedReplayConfig",
    "BalancedSample",
    "DensityRatioSampler",
    "SumTree",
    "density_ratio_priorities",
]
