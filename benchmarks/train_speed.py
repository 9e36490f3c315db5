"""Training speed of image CQL: gradient steps per second, peak memory and parameter counts.

COG's architecture (three 3x3 conv layers of 16 channels, max-pooling after the first two, heads 1024-512-256),
48x48 images plus the 5-dim proprioceptive state, the envs' 5-dim action, twin critics; 1 and 10 sampled actions
for the conservative term, batch 256 and 64. Each setting: a fresh agent, `--warmup` updates, then the median of
`--repeats` timings of `--steps` updates on one fixed batch (batch transfer and augmentation included, sampling from
replay not). CPU runs use `--threads` torch threads (default 2, this machine's cores; stated in the JSON); on CUDA,
steps are timed with synchronisation. Peak memory: CUDA's max allocated, or the process's peak RSS on CPU.

The work of an update is counted too (multiply-accumulates in matrix products and convolutions, torch's FLOP
counter), with the rate of one large matrix product on the same device and threads: `..._steps_per_s_at_matmul_peak`
is the rate an update would reach if all of its work ran that fast, a ceiling for a given architecture and device.

State mode (`--state`): COG's state-mode configuration of `experiments/cog-state.yaml` (three hidden layers of
256, the 5-dim state plus the 12-dim privileged state, K = 1, batch 256), in fp32 and in bf16 autocast (hidden
layers in bf16, output layers fp32, as `--precision bf16` trains): on CPUs with AMX or AVX512-BF16 bf16 matrix
products run several times faster. `--precision bf16` adds the bf16 rate of every image setting too.

    python benchmarks/train_speed.py [--out FILE.json] [--threads 2] [--device cpu|cuda] [--steps 3]
    python benchmarks/train_speed.py --state --threads 1 --out benchmarks/results/train_speed_state.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from robot_rl.algos.batch import to_torch
from robot_rl.algos.cql import CQL, CQLConfig
from robot_rl.data.replay import Batch, Observation

IMAGE = (48, 48, 3)
STATE_DIM = 5
ACTION_DIM = 5
# The reference implementations as measured on this machine (issue 4): steps/s.
REFERENCE = {
    "cog_batch256_k1": 0.46,
    "cog_batch64_k1": 2.04,
    "cog_batch256_k10": 1 / 26.0,
    "d3rlpy_batch256_k10": 0.70,
    "d3rlpy_batch64_k10": 3.73,
}


def synthetic_batch(size: int, seed: int = 0, privileged: bool = False) -> Batch:
    """Images and states; with `privileged`, states and privileged states and no images (state mode)."""
    rng = np.random.default_rng(seed)

    def obs() -> Observation:
        state = rng.standard_normal((size, STATE_DIM)).astype(np.float32)
        if privileged:
            return Observation(None, state, rng.standard_normal((size, PRIVILEGED_DIM)).astype(np.float32))
        return Observation(rng.integers(0, 256, (size, *IMAGE), dtype=np.uint8), state, None)

    actions = rng.uniform(-1, 1, (size, ACTION_DIM)).astype(np.float32)
    rewards = rng.integers(0, 2, size).astype(np.float32)
    return Batch(obs(), actions, rewards, obs(), np.zeros(size, bool), np.zeros(size, bool))


STATE_CONFIG = CQLConfig(hidden=(256, 256, 256), importance_sampling=False, target_range=(0.0, 100.0))
"""COG's state-mode configuration (experiments/cog-state.yaml) as far as the cost of an update goes."""
PRIVILEGED_DIM = 12


def measure(
    device: torch.device,
    batch_size: int,
    k: int,
    steps: int,
    repeats: int,
    warmup: int,
    dtype: torch.dtype | None = None,
    state_mode: bool = False,
) -> float:
    """Median steps/s of the image agent (or, with `state_mode`, the state-mode agent), autocast to `dtype`."""
    if state_mode:
        agent = CQL(STATE_CONFIG, None, STATE_DIM + PRIVILEGED_DIM, ACTION_DIM, device=device)
    else:
        agent = CQL(CQLConfig(sampled_actions=k), IMAGE, STATE_DIM, ACTION_DIM, device=device)
    agent.autocast_dtype = dtype
    batch = synthetic_batch(batch_size, privileged=state_mode)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        agent.update(to_torch(batch, device, augment_pad=4, generator=generator, use_privileged=state_mode))

    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def update_gmac(device: torch.device, batch_size: int, k: int) -> float:
    """Multiply-accumulates of one update in matrix products and convolutions (torch's FLOP counter), in 1e9."""
    from torch.utils.flop_counter import FlopCounterMode

    agent = CQL(CQLConfig(sampled_actions=k), IMAGE, STATE_DIM, ACTION_DIM, device=device)
    batch = to_torch(synthetic_batch(batch_size), device, augment_pad=4, generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        agent.update(batch)
    return counter.get_total_flops() / 2e9


def matmul_peak_gmac_per_s(device: torch.device, repeats: int = 20) -> float:
    """The rate of one large fp32 matrix product shaped like the critics' first layer at batch 2 x 256 (512 x 2304
    times 2304 x 1024): what this device reaches on the work that dominates an update."""
    a, b = torch.randn(512, 2304, device=device), torch.randn(2304, 1024, device=device)
    times = []
    for i in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 512 * 2304 * 1024 / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_speed.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (set explicitly, see README)")
    parser.add_argument("--steps", type=int, default=3, help="updates per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--state", action="store_true", help="state mode, fp32 and bf16, instead of the image grid")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"], help="image settings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.state:
        write(args.out, state_results(device, args))
        return

    agent = CQL(CQLConfig(), IMAGE, STATE_DIM, ACTION_DIM)
    results: dict[str, float | str] = {
        "device": device.type,
        "torch_threads": args.threads,
        "q_params_per_member": sum(p.numel() for p in agent.q.parameters()) // agent.cfg.critics,
        "policy_params": sum(p.numel() for p in agent.actor.parameters()),
    }
    del agent
    peak = matmul_peak_gmac_per_s(device)
    results["matmul_peak_gmac_per_s"] = round(peak, 1)
    for k in (1, 10):
        for batch_size in (256, 64):
            if "bf16" in args.precision:
                bf16 = measure(device, batch_size, k, args.steps, args.repeats, args.warmup, torch.bfloat16)
                results[f"cql_batch{batch_size}_k{k}_bf16_steps_per_s"] = round(bf16, 3)
                if ref := REFERENCE.get(f"cog_batch{batch_size}_k{k}"):
                    results[f"cql_batch{batch_size}_k{k}_bf16_vs_cog"] = round(bf16 / ref, 2)
            if "fp32" not in args.precision:
                continue
            rate = measure(device, batch_size, k, args.steps, args.repeats, args.warmup)
            results[f"cql_batch{batch_size}_k{k}_steps_per_s"] = round(rate, 3)
            gmac = update_gmac(device, batch_size, k)
            results[f"cql_batch{batch_size}_k{k}_gmac_per_step"] = round(gmac, 2)
            results[f"cql_batch{batch_size}_k{k}_gmac_per_s"] = round(gmac * rate, 1)
            # Were every multiply-accumulate as fast as the big matrix product (pooling, activations and the
            # optimiser free), an update could not go faster than this.
            results[f"cql_batch{batch_size}_k{k}_steps_per_s_at_matmul_peak"] = round(peak / gmac, 2)
            ref = REFERENCE.get(f"cog_batch{batch_size}_k{k}")
            if ref:
                results[f"cql_batch{batch_size}_k{k}_vs_cog"] = round(rate / ref, 2)
    if device.type == "cuda":
        results["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    print("reference steps/s (issue 4): " + ", ".join(f"{k} {v:.3g}" for k, v in REFERENCE.items()))
    write(args.out, results)


def state_results(device: torch.device, args: argparse.Namespace) -> dict[str, float | str]:
    """State mode at batch 256, K = 1: fp32 and bf16 steps/s, measured alternately (`--repeats` rounds of one
    timing each, medians), so that a change in the machine's load hits both alike."""
    results: dict[str, float | str] = {"device": device.type, "torch_threads": args.threads, "mode": "state"}
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            rates[name].append(measure(device, 256, 1, args.steps, 1, args.warmup, dtype, state_mode=True))
    for name, values in rates.items():
        results[f"state_cql_batch256_k1_{name}_steps_per_s"] = round(statistics.median(values), 2)
    ratios = [b / f for f, b in zip(rates["fp32"], rates["bf16"], strict=True)]
    results["state_bf16_speedup"] = round(statistics.median(ratios), 2)
    return results


def write(out: Path, results: dict[str, float | str]) -> None:
    print(f"{'metric':<42} {'ours':>12}")
    for key, value in results.items():
        print(f"{key:<42} {value!s:>12}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
