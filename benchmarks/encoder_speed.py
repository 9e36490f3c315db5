"""Image encoder speed: forward + backward of COG's CNN with ReLU before the 2x2 max-pool (the reference order) and
with the pool first and an in-place ReLU (ours, `EnsembleConvEncoder`); the two compute the same function.

Batch 256 of 48x48x3 images, 2 members (twin critics) as grouped convolutions, channels-last, `--threads` torch
threads (default 1). Median of `--repeats` timings after one warm-up each.

    python benchmarks/encoder_speed.py [--out FILE.json] [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from robot_rl.networks.modules import EnsembleConvEncoder


def reference(members: int) -> nn.Sequential:
    """COG's layer order: conv, ReLU, pool."""
    layers: list[nn.Module] = []
    in_channels = 3
    for pool in (True, True, False):
        layers += [nn.Conv2d(in_channels * members, 16 * members, 3, padding=1, groups=members), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if pool else []
        in_channels = 16
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]


def timed(net: nn.Module, images: torch.Tensor, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        net(images).sum().backward()
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "encoder_speed.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    members = 2
    images = torch.rand(256, 3 * members, 48, 48).contiguous(memory_format=torch.channels_last)
    ours = EnsembleConvEncoder(members, (48, 48, 3)).net
    ref_s = timed(reference(members), images, args.repeats)
    ours_s = timed(ours, images, args.repeats)
    result = {
        "torch_threads": args.threads,
        "batch": 256,
        "members": members,
        "reference_relu_then_pool_fwd_bwd_s": round(ref_s, 4),
        "ours_pool_then_relu_fwd_bwd_s": round(ours_s, 4),
        "speedup": round(ref_s / ours_s, 2),
    }
    for key, value in result.items():
        print(f"{key:40s} {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
