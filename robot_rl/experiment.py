"""Experiment grids: tasks x methods x seeds of offline training, resumable, sequential or in worker processes.

An experiment file (YAML) names the datasets of each task, the config of each method and the seeds:

    name: cog-state
    scale: small                  # dataset scale; missing datasets are collected from datasets/recipes/
    seeds: [0, 1, 2]
    workers: 2                    # runs in parallel; each then trains with 1 thread and evaluates in 1 process
    base: {observation: state, steps: 20000, cql: {hidden: [256, 256]}}   # OfflineConfig fields for every run
    tasks:
      closed_drawer: {task: drawer-closed-task, prior: drawer-closed-prior}  # recipe names or dataset folders
    methods:
      cog: {algo: cog}
      bc_all: {algo: bc, bc_data: all}

Every run gets OUT/<task>/<method>/seed<k>/ (a normal run folder plus cell.json). Running the same file again
skips finished runs, resumes interrupted ones from their checkpoint and starts the rest; a run whose recorded
config differs from what the file now asks for is refused rather than silently mixed, except for a larger `steps`:
raising the budget continues every run from its last checkpoint (as `robot-rl train --extend-to` does). Where a
run was first written (`out`) is not compared: a grid's folder copied elsewhere and named as a new file's `out`
trains on there, leaving the original as it was.
`robot-rl report OUT` turns the folder into tables and plots.

A `finetune` section adds online fine-tuning (`robot-rl finetune`) of the grid's own offline runs, after them:

    finetune:
      members: cog                # the method whose runs (every seed of the grid) join the ensemble
      seeds: [0, 1, 2]            # fine-tuning seeds (default: the grid's)
      base: {online_steps: 20000, eval_every: 2500, agent: {keep_cql: true}}   # FinetuneConfig fields
      methods:
        balanced: {}                              # balanced replay + the pessimistic Q-ensemble
        single: {ensemble: false}                 # ablations
        uniform: {replay: uniform}

Every fine-tuning run gets OUT/<task>/finetune/<method>/seed<k>/. Its members are the task's `members` runs, the one
trained with seed k first (so `ensemble: false` fine-tunes that one alone). A fine-tuning run starts once all its
members are finished; one whose members are not (for example left out by `--only`) waits, and a later run of the
file starts it. Fine-tuning runs resume from their checkpoints (with their online data) and are refused, like the
offline ones, when the file asks for another config than they started with.

With `workers` > 1 and no thread count set (in the file or by `threads`), the grid shares its cores (one per worker):
each run starts with one thread, and once fewer runs are left than workers, every run still training takes an equal
share of the freed cores at its next log row (so a 30k-step COG run beside a 3-minute BC run gets both cores
once BC is done). Each log row of metrics.jsonl records the thread count (`time/threads`). A state-mode fp32 run
gave the same numbers, bit for bit, on 1 and 2 threads; in bf16 the count changes their rounding, so a bf16 run that
took more cores is reproducible only up to where it took them.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from robot_rl.data.episodes import DatasetError
from robot_rl.runs import _jsonable, config_from_dict, software_versions
from robot_rl.train.finetune import FINETUNABLE, FinetuneConfig, finetune
from robot_rl.train.offline import OfflineConfig, train_offline, train_result

EXECUTION_FIELDS = {"threads", "eval_workers", "progress"}
"""Run settings that say how a run uses the machine, not what it computes: a run may resume with others."""
EXPERIMENT_KEYS = {"name", "out", "scale", "seeds", "workers", "base", "tasks", "methods", "datasets_root", "finetune"}
TASK_KEYS = {"task", "prior", "config"}
FINETUNE_KEYS = {"members", "seeds", "base", "methods"}
FINETUNE_EXECUTION_FIELDS = {"threads", "progress", "out", "resume", "device"}
"""Fine-tuning settings that do not change what a run computes (or where it was first written)."""


class ExperimentError(ValueError):
    """An experiment file that cannot be run; the message names the file and the entry."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    task: str
    method: str
    seed: int
    config: OfflineConfig

    @property
    def label(self) -> str:
        return f"{self.task}/{self.method}/seed{self.seed}"


@dataclass(frozen=True)
class FinetuneCell:
    """One fine-tuning run of the grid: its members are offline cells of the same task."""

    task: str
    method: str
    seed: int
    members: tuple[Cell, ...]
    config: FinetuneConfig

    @property
    def label(self) -> str:
        return f"{self.task}/finetune/{self.method}/seed{self.seed}"


@dataclass(frozen=True)
class Experiment:
    name: str
    out: Path
    scale: str
    seeds: tuple[int, ...]
    workers: int
    datasets_root: Path
    recipes: dict[str, Path]
    """Recipe files of datasets that are named by recipe (collected when missing)."""
    cells: tuple[Cell, ...]
    source: dict[str, Any]
    share_cores: bool = False
    """Parallel runs with no thread count set: the cores of finished runs go to the runs still training."""
    finetune_cells: tuple[FinetuneCell, ...] = ()
    """Fine-tuning runs (the file's `finetune` section), run after the offline cells."""


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ExperimentError(f"{where}: expected a mapping, got {value!r}")
    return value


def load_experiment(
    path: Path,
    recipes_dir: Path = Path("datasets/recipes"),
    workers: int | None = None,
    threads: int | None = None,
    seeds: Sequence[int] | None = None,
) -> Experiment:
    """Read and check an experiment file: every run's config is built (and type-checked) here, before any work.

    `workers` replaces the file's; `threads` sets every run's torch threads, over the file (for a grid that shares
    the machine with other work). With more than one worker, runs the file gives no `threads` train with one
    thread and evaluate in one process. `seeds` replace the file's, for the offline runs and the fine-tuning runs
    alike (to check a result on seeds it was not tuned on): the runs land beside the file's in the same folders."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ExperimentError(f"{path}: cannot read experiment ({e})") from e
    raw = _mapping(raw, str(path))
    unknown = set(raw) - EXPERIMENT_KEYS
    if unknown:
        raise ExperimentError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(EXPERIMENT_KEYS)}")
    for key in ("name", "tasks", "methods"):
        if key not in raw:
            raise ExperimentError(f"{path}: missing {key!r}")
    name = str(raw["name"])
    scale = str(raw.get("scale", "small"))
    override = None if seeds is None else list(seeds)  # the command line's, for the fine-tuning runs too
    if override is not None and (not override or len(set(override)) != len(override) or min(override) < 0):
        raise ExperimentError(f"seeds must be distinct integers >= 0, got {override}")
    seeds = override if override is not None else raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ExperimentError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    workers = raw.get("workers", 1) if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ExperimentError(f"{path}: workers must be an integer >= 1, got {workers!r}")
    out = Path(raw.get("out", f"runs/experiments/{name}"))
    root = Path(raw.get("datasets_root", "datasets"))
    base = _mapping(raw.get("base"), f"{path}: base")
    threads_set = threads is not None or "threads" in base  # before the parallel default below
    if workers > 1:  # runs share the cores: one thread and one evaluation process each, unless the file says
        base = _merge({"threads": 1, "eval_workers": 1}, base)
    if threads is not None and threads < 1:
        raise ExperimentError(f"threads must be >= 1, got {threads}")
    tasks, methods = _mapping(raw["tasks"], f"{path}: tasks"), _mapping(raw["methods"], f"{path}: methods")
    if not tasks or not methods:
        raise ExperimentError(f"{path}: tasks and methods must not be empty")

    recipes: dict[str, Path] = {}
    from sim_envs.collect import load_recipe  # the dataset's name carries the version of its scene's environment

    def dataset(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise ExperimentError(f"{where}: expected a recipe name or a dataset folder, got {value!r}")
        if Path(value).is_dir():
            return value
        recipe = recipes_dir / f"{value}.yaml"
        if not recipe.is_file():
            raise ExperimentError(f"{where}: {value!r} is neither a dataset folder nor a recipe in {recipes_dir}")
        try:
            folder = load_recipe(recipe).dataset_folder(root, scale)
        except DatasetError as e:
            raise ExperimentError(f"{where}: {e}") from e
        recipes[str(folder)] = recipe
        return str(folder)

    cells = []
    for task_name, task_entry in tasks.items():
        where = f"{path}: tasks.{task_name}"
        entry = _mapping(task_entry, where)
        if set(entry) - TASK_KEYS or "task" not in entry:
            raise ExperimentError(f"{where}: needs 'task' and may have 'prior' and 'config', got {sorted(entry)}")
        data = {"task": dataset(entry["task"], f"{where}.task")}
        if "prior" in entry:
            data["prior"] = dataset(entry["prior"], f"{where}.prior")
        task_config = _mapping(entry.get("config"), f"{where}.config")
        for method_name, method_entry in methods.items():
            method_config = _mapping(method_entry, f"{path}: methods.{method_name}")
            for seed in seeds:
                merged = _merge(_merge(_merge(base, task_config), method_config), data)
                merged.update(seed=seed, out=str(out / task_name / method_name / f"seed{seed}"), progress=False)
                if threads is not None:  # the command line's, over the file's at every level
                    merged["threads"] = threads
                label = f"{path}: {task_name}/{method_name}/seed{seed}"
                try:
                    config = config_from_dict(OfflineConfig, merged, label)
                except ValueError as e:
                    raise ExperimentError(str(e)) from e
                if config.resume is not None:
                    raise ExperimentError(f"{label}: 'resume' is not an experiment setting (rerun the file)")
                if config.eval_episodes == 0:
                    raise ExperimentError(f"{label}: eval_episodes 0 gives the run no result to report; set it >= 1")
                cells.append(Cell(str(task_name), str(method_name), seed, config))
    for entry in [*(_mapping(e, "").get("config") for e in tasks.values()), *methods.values()]:
        threads_set = threads_set or "threads" in _mapping(entry, "")  # (all read as mappings above)
    share = workers > 1 and not threads_set
    finetune_cells = _finetune_cells(path, raw, cells, out, workers, threads, override)
    return Experiment(name, out, scale, tuple(seeds), workers, root, recipes, tuple(cells), raw, share, finetune_cells)


def _finetune_cells(
    path: Path,
    raw: Mapping[str, Any],
    cells: Sequence[Cell],
    out: Path,
    workers: int,
    threads: int | None,
    seeds: Sequence[int] | None = None,
) -> tuple[FinetuneCell, ...]:
    """The fine-tuning runs of the file's `finetune` section (none without one), every config checked; `seeds`
    (the command line's) replace the section's."""
    if raw.get("finetune") is None:
        return ()
    where = f"{path}: finetune"
    section = _mapping(raw["finetune"], where)
    unknown = set(section) - FINETUNE_KEYS
    if unknown:
        raise ExperimentError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(FINETUNE_KEYS)}")
    members = section.get("members")
    member_cells = [c for c in cells if c.method == members]
    if not member_cells:
        raise ExperimentError(f"{where}.members: expected one of the grid's methods, got {members!r}")
    if member_cells[0].config.algo not in FINETUNABLE:
        raise ExperimentError(f"{where}.members: {members!r} trains {member_cells[0].config.algo!r}; fine-tuning "
                              f"needs CQL critics and a SAC actor ({', '.join(FINETUNABLE)})")  # fmt: skip
    seeds = list(seeds) if seeds is not None else section.get("seeds", sorted({c.seed for c in cells}))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ExperimentError(f"{where}.seeds: expected a non-empty list of integers, got {seeds!r}")
    base = _mapping(section.get("base"), f"{where}.base")
    if workers > 1:  # runs share the cores, one each, unless the file says otherwise
        base = _merge({"threads": 1}, base)
    methods = _mapping(section.get("methods"), f"{where}.methods")
    if not methods:
        raise ExperimentError(f"{where}.methods: name at least one fine-tuning method")
    taken = sorted(set(methods) & ({c.method for c in cells} | {c.task for c in cells}))
    if taken:
        raise ExperimentError(f"{where}.methods: {taken} already name the grid's offline methods or tasks")
    tuned = []
    for task in dict.fromkeys(c.task for c in member_cells):
        of_task = [c for c in member_cells if c.task == task]
        for seed in seeds:  # seed by seed, so that a grid stopped part way has every method at its first seeds
            for method, entry in methods.items():
                label = f"{where}: {task}/finetune/{method}/seed{seed}"
                # The member trained with this seed first: the single-agent ablation fine-tunes that one.
                first = next((i for i, c in enumerate(of_task) if c.seed == seed), 0)
                ordered = tuple(of_task[first:] + of_task[:first])
                merged = _merge(base, _mapping(entry, f"{where}.methods.{method}"))
                merged.update(runs=[str(c.config.out) for c in ordered], seed=seed, progress=False,
                              out=str(out / task / "finetune" / str(method) / f"seed{seed}"))  # fmt: skip
                if threads is not None:
                    merged["threads"] = threads
                try:
                    config = config_from_dict(FinetuneConfig, merged, label)
                except ValueError as e:
                    raise ExperimentError(str(e)) from e
                if config.resume is not None:
                    raise ExperimentError(f"{label}: 'resume' is not an experiment setting (rerun the file)")
                tuned.append(FinetuneCell(task, str(method), seed, ordered, config))
    return tuple(tuned)


def cell_status(cell: Cell) -> str:
    """'done' (finished with its final evaluation), 'partial' (has a checkpoint to resume from) or 'new'."""
    run = cell.config.out
    assert run is not None
    if not (run / "run.json").exists():
        return "new"
    try:
        # Through the config class and back: a field added since the run started reads as its default.
        recorded = _jsonable(config_from_dict(OfflineConfig, json.loads((run / "run.json").read_text())["config"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ExperimentError(
            f"{cell.label}: cannot read {run / 'run.json'} ({e!r}); move the folder away to start the run afresh"
        ) from e
    wanted = _jsonable(cell.config)
    # `out` is where the run was first written; the folder found at this cell's path is this cell's run, so a grid
    # copied or moved to another folder (to train a copy on with a larger budget) resumes there.
    keys = (set(recorded) | set(wanted)) - EXECUTION_FIELDS - {"out"}
    changed = sorted(k for k in keys if recorded.get(k) != wanted.get(k))
    if changed == ["steps"] and recorded["steps"] < cell.config.steps and (run / "checkpoints" / "latest").exists():
        return "partial"  # the budget grew: the run trains on from its last checkpoint (training ignores the budget)
    if changed:
        raise ExperimentError(
            f"{cell.label}: {run} was run with a different config ({', '.join(changed)} differ); move it away or "
            "restore the experiment file"
        )
    if (run / "metrics.jsonl").exists() and train_result(run).get("step") == cell.config.steps:
        return "done"
    return "partial" if (run / "checkpoints" / "latest").exists() else "new"


def _differences(recorded: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Names of the settings where `recorded` differs from `wanted`; a setting `wanted` leaves None (resolved when the
    run started, such as the members' discount) matches whatever was recorded."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        return [d for k in sorted(set(recorded) | set(wanted))
                for d in _differences(recorded.get(k), wanted.get(k), f"{prefix}{k}.")]  # fmt: skip
    return [] if wanted is None or recorded == wanted else [prefix.rstrip(".")]


def finetune_status(cell: FinetuneCell) -> str:
    """'done' (evaluated at its last online step), 'partial' (has a checkpoint) or 'new'; an `ExperimentError` when the
    run in the cell's folder was started with another config."""
    run = cell.config.out
    assert run is not None
    if not (run / "run.json").exists():
        return "new"
    try:
        record = json.loads((run / "run.json").read_text())
        recorded = _jsonable(config_from_dict(FinetuneConfig, record["config"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ExperimentError(
            f"{cell.label}: cannot read {run / 'run.json'} ({e!r}); move the folder away to start the run afresh"
        ) from e
    wanted = _jsonable(cell.config)
    for config in (recorded, wanted):  # members by their place in a grid (task/method/seed), wherever it was copied
        config["runs"] = [list(Path(r).parts[-3:]) for r in config["runs"]]
        for key in FINETUNE_EXECUTION_FIELDS:
            config.pop(key, None)
    changed = _differences(recorded, wanted)
    if changed:
        raise ExperimentError(
            f"{cell.label}: {run} was run with a different config ({', '.join(changed)} differ); move it away or "
            "restore the experiment file"
        )
    result = train_result(run) if (run / "metrics.jsonl").exists() else {}
    if result.get("online_steps", -1) >= cell.config.online_steps:
        return "done"
    return "partial" if (run / "checkpoints" / "latest").exists() else "new"


def run_finetune_cell(cell: FinetuneCell) -> dict[str, Any]:
    """Fine-tune one cell (resuming from its checkpoint); returns its last evaluation, why it waits, or the error."""
    run = cell.config.out
    assert run is not None
    try:
        status = finetune_status(cell)
        if status == "done":
            return {"label": cell.label, "status": "done", **train_result(run)}
        unfinished = [m.label for m in cell.members if cell_status(m) != "done"]
        if unfinished:
            return {"label": cell.label, "status": "waiting", "error": f"its members {unfinished} are not finished"}
        if status == "new" and run.exists():  # a start that died before its first checkpoint: start over
            for name in ("metrics.jsonl", "error.txt"):
                (run / name).unlink(missing_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        record = {"task": cell.task, "method": cell.method, "seed": cell.seed, "kind": "finetune"}
        (run / "cell.json").write_text(json.dumps(record, indent=2) + "\n")
        finetune(dataclasses.replace(cell.config, resume=run if status == "partial" else None))
        return {"label": cell.label, "status": "trained", **train_result(run)}
    except Exception as e:  # as with offline runs: reported, left resumable, the grid goes on
        run.mkdir(parents=True, exist_ok=True)
        (run / "error.txt").write_text(traceback.format_exc())
        return {"label": cell.label, "status": "failed", "error": f"{type(e).__name__}: {e}"}


_SHARED: tuple[Any, int] | None = None
"""In a worker process of a grid that shares its cores: (the shared count of cells not finished yet, workers)."""


def _share_cores(unfinished: Any, workers: int) -> None:
    global _SHARED
    _SHARED = (unfinished, workers)


def _thread_share() -> int:
    """Threads for a run now: the grid's cores (one per worker) over the runs that can still be training."""
    assert _SHARED is not None
    unfinished, workers = _SHARED
    return max(1, workers // max(1, min(workers, int(unfinished.value))))


def run_cell(cell: Cell) -> dict[str, Any]:
    """Train one cell (resuming if it has a checkpoint); returns its last evaluation, or the error."""
    try:
        return _run_cell(cell)
    finally:
        if _SHARED is not None:
            with _SHARED[0].get_lock():
                _SHARED[0].value -= 1


def _run_cell(cell: Cell) -> dict[str, Any]:
    run = cell.config.out
    assert run is not None
    try:
        status = cell_status(cell)
        if status == "done":
            return {"label": cell.label, "status": "done", **train_result(run)}
        if status == "new" and run.exists():  # a start that died before its first checkpoint: start over
            for name in ("metrics.jsonl", "error.txt"):
                (run / name).unlink(missing_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        (run / "cell.json").write_text(
            json.dumps({"task": cell.task, "method": cell.method, "seed": cell.seed}, indent=2) + "\n"
        )
        threads = _thread_share if _SHARED is not None else None
        train_offline(cell.config, resume=run if status == "partial" else None, threads=threads)
        return {"label": cell.label, "status": "trained", **train_result(run)}
    except Exception as e:  # one failed run must not stop the grid; it is reported and left resumable
        run.mkdir(parents=True, exist_ok=True)
        (run / "error.txt").write_text(traceback.format_exc())
        return {"label": cell.label, "status": "failed", "error": f"{type(e).__name__}: {e}"}


def select(experiment: Experiment, names: Sequence[str]) -> Experiment:
    """The experiment restricted to the named cells (all of them if `names` is empty). Names are tasks, methods or
    seeds (`seed1`); within a kind a cell needs any of them, across kinds all: `closed_drawer cog seed0` is one
    cell. Only the datasets the chosen cells train on are collected. An unknown name is an `ExperimentError`."""
    if not names:
        return experiment
    every: list[Cell | FinetuneCell] = [*experiment.cells, *experiment.finetune_cells]
    kinds = {
        "task": {c.task for c in every},
        "method": {c.method for c in every},
        "seed": {f"seed{c.seed}" for c in every},
    }
    unknown = sorted(set(names) - set().union(*kinds.values()))
    if unknown:
        known = sorted(kinds["task"] | kinds["method"]) + sorted(kinds["seed"])
        raise ExperimentError(f"{experiment.name}: no task, method or seed named {unknown}; known: {known}")
    wanted = {kind: set(names) & values for kind, values in kinds.items()}

    def chosen(cell: Cell | FinetuneCell) -> bool:
        keys = {"task": cell.task, "method": cell.method, "seed": f"seed{cell.seed}"}
        return all(not want or keys[kind] in want for kind, want in wanted.items())

    cells = tuple(c for c in experiment.cells if chosen(c))
    tuned = tuple(c for c in experiment.finetune_cells if chosen(c))
    offline = [*cells, *(m for c in tuned for m in c.members)]  # fine-tuning reads its members' datasets
    used = {str(path) for c in offline for path in (c.config.task, c.config.prior) if path is not None}
    recipes = {folder: recipe for folder, recipe in experiment.recipes.items() if str(folder) in used}
    return dataclasses.replace(experiment, cells=cells, recipes=recipes, finetune_cells=tuned)


def ensure_datasets(experiment: Experiment, workers: int | None = None, progress: bool = True) -> list[Path]:
    """Collect every dataset the experiment names by recipe and that does not exist yet (resumable too); returns
    those collected now. A dataset already there is kept, and refused if its recipe has changed since."""
    from sim_envs.collect import collect, load_recipe

    made = []
    for recipe_path in experiment.recipes.values():
        result = collect(load_recipe(recipe_path), experiment.scale, experiment.datasets_root, workers, progress)
        if result.collected_now:
            made.append(result.folder)
    return made


def run_experiment(
    experiment: Experiment, on_result: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Run every cell that is not finished; `experiment.workers` at a time. Returns one result per cell."""
    experiment.out.mkdir(parents=True, exist_ok=True)
    record = {"experiment": experiment.source, "versions": software_versions()}
    (experiment.out / "experiment.json").write_text(json.dumps(record, indent=2) + "\n")
    for cell in experiment.cells:
        cell_status(cell)  # refuse a changed config before any work starts
    for tuned in experiment.finetune_cells:
        finetune_status(tuned)
    results: list[dict[str, Any]] = []

    def collect(result: dict[str, Any]) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    if experiment.workers == 1:
        for cell in experiment.cells:
            collect(run_cell(cell))
        for tuned in experiment.finetune_cells:  # after the offline runs they start from
            collect(run_finetune_cell(tuned))
        return results
    context = multiprocessing.get_context("spawn")
    sharing: dict[str, Any] = {}
    if experiment.share_cores:
        unfinished = context.Value("i", len(experiment.cells))
        sharing = {"initializer": _share_cores, "initargs": (unfinished, experiment.workers)}
    if experiment.cells:
        with ProcessPoolExecutor(experiment.workers, mp_context=context, **sharing) as pool:
            for result in pool.map(run_cell, experiment.cells):
                collect(result)
    if experiment.finetune_cells:
        with ProcessPoolExecutor(experiment.workers, mp_context=context) as pool:
            for result in pool.map(run_finetune_cell, experiment.finetune_cells):
                collect(result)
    return results


def describe(experiment: Experiment) -> str:
    def grid(cells: Sequence[Cell | FinetuneCell], status: Callable[[Any], str]) -> str:
        counts: dict[str, int] = {}
        for state in map(status, cells):
            counts[state] = counts.get(state, 0) + 1
        tasks, methods, seeds = ({getattr(c, k) for c in cells} for k in ("task", "method", "seed"))
        return (f"{len(tasks)} tasks x {len(methods)} methods x {len(seeds)} seeds = {len(cells)} runs "
                f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})")  # fmt: skip

    text = f"experiment {experiment.name}: {grid(experiment.cells, cell_status)}"
    if experiment.finetune_cells:
        text += f"; fine-tuning {grid(experiment.finetune_cells, finetune_status)}"
    return f"{text}; {experiment.workers} at a time; output {experiment.out}"
