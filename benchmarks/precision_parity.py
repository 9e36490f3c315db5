"""Does image COG learn the same in bf16 autocast as in fp32? Two runs, one of each, compared step by step.

`train_speed.py --precision fp32 bf16` shows that bf16 is faster; this shows what it does to learning. Both runs
train image COG (COG's networks, 48x48 images, random shift) on the `small` closed-drawer data from the same seed,
so they draw the same batches and augmentations and start from the same weights; only the precision differs. Every
`--log-every` steps the runs' logged training metrics (TD loss, conservative gap, Q on the data, the actor's loss and
entropy, alpha) are compared: the JSON holds both trajectories, the relative difference of each metric averaged over
the log points, and the mean over the last quarter of the run of each, per precision. Two runs of the *same*
precision from the same seed and thread count repeat exactly, so any difference is the precision's; divergence grows
with the steps, so the early points say most about the arithmetic and the late ones about the learning. (How far two
fp32 runs from different seeds drift apart, the noise to set these figures against, is not measured here.)

The runs train in parallel, one process and one torch thread each (stated in the JSON); run folders that already
hold `--steps` steps are read instead of retrained, so a rerun only recomputes the comparison.

    python benchmarks/precision_parity.py [--steps 1500] [--out benchmarks/results/precision_parity.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

METRICS = ("critic/td_loss", "critic/cql_gap", "critic/q_data", "actor/loss", "actor/entropy", "alpha/value")


def train(precision: str, steps: int, log_every: int, run: Path, data: Path) -> str:
    from robot_rl.train.offline import OfflineConfig, train_offline

    if _rows(run) and max(_rows(run)) >= steps:
        return f"{precision}: read {run}"
    cfg = OfflineConfig(
        task=data / "drawer-closed-task-small-v1",
        prior=data / "drawer-closed-prior-small-v1",
        algo="cog",
        observation="image",
        precision=precision,  # type: ignore[arg-type]
        steps=steps,
        eval_every=0,
        eval_episodes=20,
        eval_workers=1,
        checkpoint_every=500,
        log_every=log_every,
        threads=1,
        seed=0,
        progress=False,
        out=run,
    )
    cfg = dataclasses.replace(cfg, cql=dataclasses.replace(cfg.cql, bc_warm_start_steps=500))  # CQL's actor from 500
    resume = run if (run / "checkpoints" / "latest").exists() else None
    train_offline(cfg, resume=resume)
    return f"{precision}: trained {run}"


def _rows(run: Path) -> dict[int, dict[str, float]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {int(r["step"]): r for r in rows if "critic/td_loss" in r}


def compare(fp32: dict[int, dict[str, float]], bf16: dict[int, dict[str, float]]) -> dict[str, Any]:
    steps = sorted(set(fp32) & set(bf16))
    if not steps:
        raise SystemExit("precision_parity: the runs have no logged step in common")
    last = steps[len(steps) * 3 // 4 :]
    out: dict[str, Any] = {"steps_compared": len(steps), "last_step": steps[-1]}
    for key in METRICS:
        name = key.replace("/", "_")
        a = [fp32[s][key] for s in steps]
        b = [bf16[s][key] for s in steps]
        scale = statistics.mean(abs(x) for x in a + b) or 1.0
        diff = statistics.mean(abs(x - y) for x, y in zip(a, b, strict=True))
        out[f"{name}_mean_abs_diff_over_mean_abs"] = round(diff / scale, 4)
        out[f"{name}_last_quarter_fp32"] = round(statistics.mean(fp32[s][key] for s in last), 4)
        out[f"{name}_last_quarter_bf16"] = round(statistics.mean(bf16[s][key] for s in last), 4)
        out[f"{name}_trajectory"] = {"step": steps, "fp32": a, "bf16": b}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--runs", type=Path, default=Path("runs/bf16-parity"))
    parser.add_argument("--datasets", type=Path, default=Path("datasets"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/precision_parity.json"))
    args = parser.parse_args()
    for name in ("drawer-closed-task-small-v1", "drawer-closed-prior-small-v1"):
        if not (args.datasets / name).is_dir():
            raise SystemExit(
                f"precision_parity: {args.datasets / name} is missing; collect it with "
                f"`robot-rl collect datasets/recipes/{name.rsplit('-small', 1)[0]}.yaml --scale small`"
            )
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        jobs = [
            pool.submit(train, p, args.steps, args.log_every, args.runs / p, args.datasets) for p in ("fp32", "bf16")
        ]
        for job in jobs:
            print(job.result())
    comparison = compare(_rows(args.runs / "fp32"), _rows(args.runs / "bf16"))
    result = {"torch_threads_per_run": 1, "steps": args.steps, **comparison}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        if not key.endswith("_trajectory"):
            print(f"{key:60s} {value}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
