"""Reports over training runs: success per task and method (mean +- standard error over seeds), learning curves
and success bars.

Runs are found by their run.json below the given folders. A run made by `robot-rl experiment` names its task,
method and seed in cell.json; any other training run is filed under its task dataset's task and its algorithm.
The final success of a run is its last evaluation, and only runs that reached their configured step count count.

Fine-tuning runs (`robot-rl finetune`) are found too: their x-axis is online environment steps, their method is the
replay mode plus the ablation flags (e.g. `balanced`, `uniform_single`), their task that of their first offline
run; the report adds what the fine-tuning issue asks of them: the success before any online step, the lowest point
of the curve below it (a collapse), and the area under the success curve (its mean over evaluations).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_rl.train.logger import read_metrics


class ReportError(ValueError):
    """Nothing to report on, or a run folder whose records cannot be read; the message names the path."""


@dataclass
class RunSummary:
    folder: Path
    task: str
    method: str
    seed: int
    steps: int
    """Configured gradient steps."""
    finished: bool
    success: float | None
    ever_success: float | None
    episodes: int
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(step, eval success) of every evaluation."""
    observation: str = ""
    eval_condition: str = ""
    kind: str = "train"
    """"train" (offline) or "finetune" (online, steps are environment steps)."""
    reached: dict[str, float] = field(default_factory=dict)
    """Share of the last evaluation's episodes that reached each of the task's milestones, in task order (empty
    for runs evaluated before evaluations recorded milestones)."""
    live_curve: list[tuple[int, float]] = field(default_factory=list)
    """(step, eval success) of the live actor at every evaluation, in runs that deploy an averaged actor (eval/* is
    the average there, eval_live/* the live actor on the same episodes); empty for the others."""
    export_curve: list[tuple[int, float]] = field(default_factory=list)
    """(step, eval success) of the latest export alone at every evaluation, in runs that deploy the average of their
    last exports (`average_exports`: eval/* is the average, eval_export/* the export on the same episodes)."""

    @property
    def initial(self) -> float | None:
        """Success of the first evaluation (for fine-tuning: before any online step)."""
        return self.curve[0][1] if self.curve else None

    @property
    def drop(self) -> float | None:
        """How far the curve falls below its first point at its lowest (0 if it never does)."""
        return max(0.0, self.curve[0][1] - min(v for _, v in self.curve)) if self.curve else None

    def steps_to(self, target: float) -> int | None:
        """The first evaluation step whose success is at least `target` (None if none is)."""
        return next((step for step, value in self.curve if value >= target), None)

    @property
    def auc(self) -> float | None:
        """Area under the success curve, normalised: the trapezoid integral over steps divided by the step span."""
        if len(self.curve) < 2:
            return self.curve[0][1] if self.curve else None
        xs, ys = np.array([x for x, _ in self.curve], float), np.array([y for _, y in self.curve], float)
        return float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)) / (xs[-1] - xs[0]))


def _task_of(config: dict[str, Any]) -> str:
    task = config.get("task")
    if task:
        metadata = Path(task) / "data" / "metadata.json"
        if metadata.exists():
            recipe = json.loads(metadata.read_text()).get("robot_rl", {}).get("recipe", {})
            if isinstance(recipe, dict) and recipe.get("task"):
                return str(recipe["task"])
        return Path(task).name
    return "unknown"


def _finetune_method(config: dict[str, Any]) -> str:
    agent = config.get("agent") or {}
    return (
        str(config.get("replay", "balanced"))
        + ("" if config.get("ensemble", True) else "_single")
        + ("_keep_cql" if isinstance(agent, dict) and agent.get("keep_cql") else "")
    )


def _member_config(config: dict[str, Any]) -> dict[str, Any]:
    """The offline run configuration of a fine-tuning run's first member ({} when its folder is gone)."""
    runs = config.get("runs") or []
    if runs and (Path(runs[0]) / "run.json").exists():
        member: dict[str, Any] = json.loads((Path(runs[0]) / "run.json").read_text())["config"]
        return member
    return {}


def _summarise_run(folder: Path, record: dict[str, Any], kind: str) -> RunSummary:
    """One run's summary from its records (a malformed entry raises; `find_runs` names the folder)."""
    config = record["config"]
    cell_path = folder / "cell.json"
    cell = json.loads(cell_path.read_text()) if cell_path.exists() else {}
    rows = read_metrics(folder / "metrics.jsonl") if (folder / "metrics.jsonl").exists() else []
    evals = [r for r in rows if "eval/success" in r]
    last = evals[-1] if evals else {}
    steps = int(config.get("steps" if kind == "train" else "online_steps", 0))
    member = _member_config(config) if kind == "finetune" else {}
    task = _task_of(config) if kind == "train" else (_task_of(member) if member else "unknown")
    method = config.get("algo", "unknown") if kind == "train" else _finetune_method(config)
    return RunSummary(
        folder=folder,
        task=str(cell.get("task") or task),
        method=str(cell.get("method") or method),
        seed=int(cell.get("seed", config.get("seed", 0))),
        steps=steps,
        finished=bool(last) and int(last["step"]) >= steps,
        success=float(last["eval/success"]) if last else None,
        ever_success=float(last["eval/ever_success"]) if last else None,
        episodes=int(last.get("eval/episodes", 0)) if last else 0,
        curve=[(int(r["step"]), float(r["eval/success"])) for r in evals],
        observation=str(config.get("observation") or member.get("observation", "")),
        eval_condition=str(config.get("eval_condition") or config.get("initial_condition") or ""),
        kind=kind,
        reached={k.removeprefix("eval/reached/"): float(v) for k, v in last.items() if k.startswith("eval/reached/")},
        live_curve=[(int(r["step"]), float(r["eval_live/success"])) for r in evals if "eval_live/success" in r],
        export_curve=[(int(r["step"]), float(r["eval_export/success"])) for r in evals if "eval_export/success" in r],
    )


def find_runs(paths: Iterable[Path]) -> list[RunSummary]:
    """Every training or fine-tuning run below `paths` (a run folder itself counts), sorted by task, method, seed."""
    runs = []
    for root in paths:
        if not root.exists():
            raise ReportError(f"no such folder: {root}")
        for record_path in sorted(root.rglob("run.json")):
            try:
                record = json.loads(record_path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ReportError(f"{record_path}: cannot read the run record ({e})") from e
            kind = record.get("command")
            if kind not in ("train", "finetune"):
                continue
            try:
                runs.append(_summarise_run(record_path.parent, record, str(kind)))
            except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:  # json errors are ValueErrors
                raise ReportError(
                    f"{record_path.parent}: its run record, cell.json or metrics.jsonl has a malformed entry ({e!r})"
                ) from e
    return sorted(runs, key=lambda r: (r.task, r.method, r.seed))


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)); s.e. is nan for one value."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean, se = mean_se(values)
    return f"{mean:.2f} ± {se:.2f} (n={len(values)})" if not math.isnan(se) else f"{mean:.2f} (n=1)"


def summarise(runs: Sequence[RunSummary]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {method: {success_mean, success_se, ever_mean, ever_se, seeds, unfinished}}} over finished runs."""
    grouped: dict[str, dict[str, list[RunSummary]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run.task][run.method].append(run)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, methods in grouped.items():
        out[task] = {}
        for method, members in methods.items():
            done = [r for r in members if r.finished and r.success is not None]
            s_mean, s_se = mean_se([r.success for r in done if r.success is not None])
            e_mean, e_se = mean_se([r.ever_success for r in done if r.ever_success is not None])
            out[task][method] = {
                "success_mean": s_mean, "success_se": s_se, "ever_mean": e_mean, "ever_se": e_se,
                "seeds": [r.seed for r in done], "per_seed": [r.success for r in done],
                "episodes": sorted({r.episodes for r in done}), "unfinished": [str(r.folder) for r in members
                                                                              if not r.finished],
            }  # fmt: skip
    return out


def markdown_table(runs: Sequence[RunSummary], key: str = "success") -> str:
    """Tasks as rows, methods as columns: mean ± s.e. over the finished seeds of the final (or ever) success."""
    tasks = sorted({r.task for r in runs})
    methods = sorted({r.method for r in runs}, key=_method_order)
    lines = ["| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for task in tasks:
        cells = []
        for method in methods:
            done = [r for r in runs if r.task == task and r.method == method and r.finished]
            values = [getattr(r, key) for r in done if getattr(r, key) is not None]
            cells.append(_cell(values))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _method_order(method: str) -> tuple[int, str]:
    order = ["cog", "cql", "sac", "bc_all", "bc", "bc_task", "balanced", "uniform", "online_only", "balanced_single"]
    return (order.index(method) if method in order else len(order), method)


FINETUNE_TARGET = 0.95
"""The success the fine-tuning issue asks for within 20k online steps; the report says when each seed got there."""


def _finetune_section(runs: Sequence[RunSummary]) -> list[str]:
    """Fine-tuning runs: success before any online step, final, the largest drop below the start, and the area
    under the curve, each mean ± s.e. over seeds, and the online steps at which each seed first reached
    `FINETUNE_TARGET` (an empty list when there are none)."""
    tuned = [r for r in runs if r.kind == "finetune" and r.finished]
    if not tuned:
        return []
    lines = ["## Fine-tuning (x = online environment steps)", "",
             f"| task | method | initial | final | largest drop below initial | area under curve | "
             f"first ≥ {FINETUNE_TARGET} at (per seed) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task, method in sorted({(r.task, r.method) for r in tuned}, key=lambda k: (k[0], _method_order(k[1]))):
        group = [r for r in tuned if r.task == task and r.method == method]

        def cell(values: list[float | None]) -> str:
            return _cell([v for v in values if v is not None])

        lines.append(
            f"| {task} | {method} | {cell([r.initial for r in group])} | {cell([r.success for r in group])} | "
            f"{cell([r.drop for r in group])} | {cell([r.auc for r in group])} | "
            + ", ".join("never" if (n := r.steps_to(FINETUNE_TARGET)) is None else str(n) for r in group)
            + " |"
        )
    return [*lines, ""]


def _milestone_section(runs: Sequence[RunSummary]) -> list[str]:
    """Where episodes stop: per task and method, the share of final-evaluation episodes that reached each of the
    task's milestones (mean over finished seeds); an empty list when no finished run recorded milestones."""
    rows = []
    for task, method in sorted({(r.task, r.method) for r in runs}, key=lambda k: (k[0], _method_order(k[1]))):
        group = [r for r in runs if r.task == task and r.method == method and r.finished and r.reached]
        if not group:
            continue
        names = list(dict.fromkeys(name for r in group for name in r.reached))
        cells = [f"{name} {_cell([r.reached[name] for r in group if name in r.reached])}" for name in names]
        rows.append(f"| {task} | {method} | {' → '.join(cells)} |")
    if not rows:
        return []
    return ["## Where episodes stop (share reaching each milestone at any step, in task order)", "",
            "| task | method | milestones |", "|---|---|---|", *rows, ""]  # fmt: skip


def _beside_section(runs: Sequence[RunSummary], beside: str, title: str, columns: tuple[str, str]) -> list[str]:
    """Runs that evaluate another policy beside the deployed one on the same episodes (`beside`: the RunSummary
    curve of it, live_curve or export_curve): the final success of each, and the deployed-minus-other difference
    over every evaluation of every seed, with how many evaluations each side won; an empty list when no finished
    run has such a curve."""
    rows = []
    for task, method in sorted({(r.task, r.method) for r in runs}, key=lambda k: (k[0], _method_order(k[1]))):
        group = [r for r in runs if r.task == task and r.method == method and r.finished and getattr(r, beside)]
        if not group:
            continue
        pairs = [(v, other[s]) for r in group for s, v in r.curve if s in (other := dict(getattr(r, beside)))]
        diffs = [a - b for a, b in pairs]
        ahead, behind = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        rows.append(
            f"| {task} | {method} | {_cell([r.success for r in group if r.success is not None])} | "
            f"{_cell([getattr(r, beside)[-1][1] for r in group])} | {_cell(diffs)} | {ahead} / {behind} / "
            f"{len(diffs) - ahead - behind} |"
        )
    if not rows:
        return []
    deployed, name = columns
    return [f"## {title} (same evaluation episodes)", "",
            f"| task | method | {deployed}, final | {name}, final | deployed − {name}, every evaluation | "
            "evaluations deployed ahead / behind / tied |",
            "|---|---|---|---|---|---|", *rows, ""]  # fmt: skip


def write_report(paths: Sequence[Path], out: Path) -> Path:
    """report.md, results.json, curves_<task>.png and success_bars.png in `out`."""
    from robot_rl.media import bar_chart, curve_chart, write_png

    runs = find_runs(paths)
    if not runs:
        raise ReportError(f"no training or fine-tuning runs (run.json) below {', '.join(map(str, paths))}")
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    tasks = sorted(summary)
    methods = sorted({r.method for r in runs}, key=_method_order)
    images = []
    for task, kind in [(t, k) for t in tasks for k in ("train", "finetune")]:
        lines = {}
        for method in methods:
            curves = [r.curve for r in runs if r.task == task and r.method == method and r.curve and r.kind == kind]
            if not curves:
                continue
            steps = sorted({s for c in curves for s, _ in c})
            # Mean over the seeds that have an evaluation at each step (all of them, for finished runs).
            means = [float(np.mean([v for c in curves for s, v in c if s == step])) for step in steps]
            lines[method] = (steps, means)
        if lines:
            name, what = ("curves", "gradient steps") if kind == "train" else ("finetune_curves", "online steps")
            chart = curve_chart(f"{task}: eval success vs {what}", lines)
            images.append(write_png(out / f"{name}_{task}.png", chart))
    bars = {task: {m: (v["success_mean"], v["success_se"]) for m, v in summary[task].items()} for task in tasks}
    images.append(write_png(out / "success_bars.png", bar_chart("final success (mean ± s.e. over seeds)", bars)))
    modes = sorted({r.observation for r in runs if r.observation})
    unfinished = [r for r in runs if not r.finished]
    text = [
        "# Results",
        "",
        f"Runs: {len(runs)} ({len(unfinished)} unfinished, left out of the tables); observation: "
        f"{', '.join(modes) or '?'}. Final success = task success at the last step of each evaluation episode, at "
        "the end of training, from the task's hard initial condition; mean ± standard error over seeds.",
        "",
        "## Final success",
        "",
        markdown_table(runs, "success"),
        "",
        "## Ever succeeded (at any step of the episode)",
        "",
        markdown_table(runs, "ever_success"),
        "",
        *_milestone_section(runs),
        *_beside_section(runs, "live_curve", "Averaged actor against the live actor", ("deployed (average)", "live")),
        *_beside_section(
            runs, "export_curve", "Averaged exports against the latest export", ("deployed (average)", "export")
        ),
        *_finetune_section(runs),
        "## Plots",
        "",
        *[f"![{p.stem}]({p.name})" for p in images],
        "",
        "## Runs",
        "",
        "| task | method | seed | steps | success | episodes | folder |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r.task} | {r.method} | {r.seed} | {r.curve[-1][0] if r.curve else 0}/{r.steps} | "
            f"{'-' if r.success is None else f'{r.success:.2f}'} | {r.episodes} | {r.folder} |"
            for r in runs
        ],
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
    return out / "report.md"
