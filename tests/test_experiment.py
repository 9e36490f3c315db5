"""Experiment grids and reports, on tiny real datasets: config checking, resumption, refusal of changed configs,
and the numbers in the report's table."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from robot_rl.algos.pessimistic import PessimisticEnsemble
from robot_rl.data.episodes import DatasetError
from robot_rl.experiment import (
    ExperimentError,
    cell_status,
    describe,
    ensure_datasets,
    finetune_status,
    load_experiment,
    run_experiment,
    select,
)
from robot_rl.report import find_runs, mean_se, write_report
from robot_rl.runs import write_run_record
from robot_rl.train.logger import read_metrics
from robot_rl.train.offline import OfflineConfig, train_offline
from sim_envs.collect import SCALES, collect, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "datasets" / "recipes"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datasets")
    out = {}
    for key, file in (("task", "drawer-closed-task"), ("prior", "drawer-closed-prior")):
        recipe = dataclasses.replace(load_recipe(RECIPES / f"{file}.yaml"), episodes=dict.fromkeys(SCALES, 3))
        out[key] = collect(recipe, "smoke", root, workers=1, progress=False).folder
    return out


def write_experiment(path: Path, datasets: dict[str, Path], out: Path, **changes: Any) -> Path:
    spec: dict[str, Any] = {
        "name": "tiny",
        "out": str(out),
        "seeds": [0, 1],
        "workers": 1,
        "base": {
            "observation": "state",
            "steps": 6,
            "batch_size": 8,
            "eval_every": 3,
            "eval_episodes": 2,
            "eval_workers": 1,
            "eval_videos": 0,
            "checkpoint_every": 3,
            "log_every": 3,
            "threads": 1,
            "cql": {"hidden": [16, 16]},
            "bc": {"hidden": [16, 16]},
        },
        "tasks": {"closed_drawer": {"task": str(datasets["task"]), "prior": str(datasets["prior"])}},
        "methods": {"cog": {"algo": "cog"}, "bc_all": {"algo": "bc", "bc_data": "all"}},
    }
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_is_expanded_with_merged_configs(datasets: dict[str, Path], tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(tmp_path / "e.yaml", datasets, tmp_path / "out", workers=2))
    labels = [f"closed_drawer/{m}/seed{s}" for m in ("cog", "bc_all") for s in (0, 1)]
    assert [c.label for c in exp.cells] == labels
    cog, bc = exp.cells[1].config, exp.cells[2].config
    assert (cog.algo, cog.seed, cog.steps, cog.cql.hidden) == ("cog", 1, 6, (16, 16))
    assert (bc.algo, bc.bc_data, bc.prior) == ("bc", "all", datasets["prior"])
    assert cog.out == tmp_path / "out" / "closed_drawer" / "cog" / "seed1"
    # With parallel runs each trains on one thread and evaluates in one process (the file did not say otherwise).
    assert cog.threads == 1 and cog.eval_workers == 1


def test_workers_and_threads_from_the_command_line_set_each_runs_threads(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    """`--workers 2` on a file written for one worker must not put two 2-thread runs on a 2-core machine."""
    base = {"observation": "state", "steps": 6}
    path = write_experiment(tmp_path / "e.yaml", datasets, tmp_path / "out", workers=1, base=base)
    assert {c.config.threads for c in load_experiment(path).cells} == {OfflineConfig.threads}
    parallel = load_experiment(path, workers=2)
    assert parallel.workers == 2 and {(c.config.threads, c.config.eval_workers) for c in parallel.cells} == {(1, 1)}
    assert {c.config.threads for c in load_experiment(path, threads=1).cells} == {1}
    pinned = write_experiment(tmp_path / "p.yaml", datasets, tmp_path / "out", workers=2, base={**base, "threads": 2})
    assert {c.config.threads for c in load_experiment(pinned).cells} == {2}  # the file's own setting stands
    assert {c.config.threads for c in load_experiment(pinned, threads=1).cells} == {1}  # the command line's wins
    per_method = write_experiment(tmp_path / "m.yaml", datasets, tmp_path / "out", methods={"cog": {"algo": "cog",
                                  "threads": 2}})  # fmt: skip
    assert {c.config.threads for c in load_experiment(per_method, threads=1).cells} == {1}  # over a method's too
    with pytest.raises(ExperimentError, match="threads must be >= 1"):
        load_experiment(path, threads=0)


def test_parallel_runs_take_the_cores_of_finished_runs(datasets: dict[str, Path], tmp_path: Path) -> None:
    """Two workers, no thread count set: the long run trains on one thread beside the short one, then on both
    cores (from the first log row after the short run finished). A thread count in the file or on the command line
    turns the sharing off."""
    base = {"observation": "state", "batch_size": 8, "eval_every": 0, "eval_episodes": 1, "eval_workers": 1,
            "eval_videos": 0, "cql": {"hidden": [16, 16]}, "bc": {"hidden": [16, 16]}}  # fmt: skip
    methods = {"cog": {"algo": "cog", "steps": 1000, "checkpoint_every": 100, "log_every": 100},
               "bc_all": {"algo": "bc", "bc_data": "all", "steps": 3, "checkpoint_every": 3,
                          "log_every": 3}}  # fmt: skip
    path = write_experiment(tmp_path / "e.yaml", datasets, tmp_path / "out", seeds=[0], workers=2, base=base,
                            methods=methods)  # fmt: skip
    exp = load_experiment(path)
    assert exp.share_cores and {c.config.threads for c in exp.cells} == {1}
    assert not load_experiment(path, threads=1).share_cores
    pinned = write_experiment(tmp_path / "p.yaml", datasets, tmp_path / "o", workers=2, base={**base, "threads": 1})
    assert not load_experiment(pinned).share_cores
    per_method = {**methods, "cog": {**methods["cog"], "threads": 1}}
    assert not load_experiment(write_experiment(tmp_path / "m.yaml", datasets, tmp_path / "o", workers=2, base=base,
                                                methods=per_method)).share_cores  # fmt: skip

    assert [r["status"] for r in run_experiment(exp)] == ["trained", "trained"]
    rows = read_metrics(tmp_path / "out" / "closed_drawer" / "cog" / "seed0" / "metrics.jsonl")
    threads = [r["time/threads"] for r in rows if "time/threads" in r]
    assert len(threads) == 10 and threads[0] == 1 and threads[-1] == 2
    assert threads == sorted(threads)  # taken once and kept
    bc_rows = read_metrics(tmp_path / "out" / "closed_drawer" / "bc_all" / "seed0" / "metrics.jsonl")
    assert [r["time/threads"] for r in bc_rows if "time/threads" in r] == [1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": {"cog": {"algo": "cog", "stepz": 3}}}, "unknown fields ['stepz']"),
        ({"methods": {"cog": {"algo": "dqn"}}}, "'dqn' is not one of"),
        ({"methods": {"cog": {"algo": "cog", "eval_episodes": 0}}}, "cog/seed0: eval_episodes 0 gives the run no"),
        ({"tasks": {"t": {"task": "no-such-recipe"}}}, "neither a dataset folder nor a recipe"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"workerz": 2}, "unknown keys ['workerz']"),
        ({"finetune": {"members": "cogg", "methods": {"b": {}}}}, "finetune.members: expected one of the grid's"),
        ({"finetune": {"members": "bc_all", "methods": {"b": {}}}}, "'bc_all' trains 'bc'; fine-tuning needs"),
        ({"finetune": {"members": "cog", "methods": {"cog": {}}}}, "['cog'] already name the grid's offline"),
        ({"finetune": {"members": "cog", "methods": {"b": {"replay": "prio"}}}}, "'prio' is not one of"),
        ({"finetune": {"members": "cog", "methods": {"b": {"resume": "x"}}}}, "'resume' is not an experiment"),
        ({"finetune": {"members": "cog", "method": {}}}, "unknown keys ['method']"),
    ],
)
def test_bad_experiment_files_are_refused_with_the_entry_named(
    datasets: dict[str, Path], tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = write_experiment(tmp_path / "e.yaml", datasets, tmp_path / "out", **change)
    with pytest.raises(ExperimentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_experiment(path)


def test_recipe_names_resolve_to_dataset_folders_of_the_scale(datasets: dict[str, Path], tmp_path: Path) -> None:
    path = write_experiment(
        tmp_path / "e.yaml", datasets, tmp_path / "out", scale="smoke", datasets_root=str(tmp_path / "d"),
        tasks={"closed_drawer": {"task": "drawer-closed-task", "prior": "drawer-closed-prior"}},
    )  # fmt: skip
    exp = load_experiment(path, recipes_dir=RECIPES)
    assert exp.cells[0].config.task == tmp_path / "d" / "drawer-closed-task-smoke-v1"
    assert set(exp.recipes.values()) == {RECIPES / "drawer-closed-task.yaml", RECIPES / "drawer-closed-prior.yaml"}


def test_datasets_are_collected_once_and_a_changed_recipe_is_refused(datasets: dict[str, Path], tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name in ("drawer-closed-task", "drawer-closed-prior"):
        raw = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
        (recipes / f"{name}.yaml").write_text(yaml.safe_dump({**raw, "episodes": dict.fromkeys(SCALES, 2)}))
    path = write_experiment(
        tmp_path / "e.yaml", datasets, tmp_path / "out", scale="smoke", datasets_root=str(tmp_path / "d"),
        tasks={"closed_drawer": {"task": "drawer-closed-task", "prior": "drawer-closed-prior"}},
    )  # fmt: skip
    exp = load_experiment(path, recipes_dir=recipes)
    made = ensure_datasets(exp, workers=1, progress=False)
    assert sorted(p.name for p in made) == ["drawer-closed-prior-smoke-v1", "drawer-closed-task-smoke-v1"]
    data = [folder / "data" / "main_data.hdf5" for folder in made]
    before = [(d.stat().st_mtime_ns, d.read_bytes()) for d in data]
    assert ensure_datasets(exp, workers=1, progress=False) == []  # there already: kept as they are
    assert [(d.stat().st_mtime_ns, d.read_bytes()) for d in data] == before

    raw = yaml.safe_load((recipes / "drawer-closed-prior.yaml").read_text())
    (recipes / "drawer-closed-prior.yaml").write_text(yaml.safe_dump({**raw, "noise": 0.3}))
    with pytest.raises(DatasetError, match=r"from another recipe \(it differs in noise\)"):
        ensure_datasets(load_experiment(path, recipes_dir=recipes), workers=1, progress=False)
    assert [(d.stat().st_mtime_ns, d.read_bytes()) for d in data] == before


def test_only_selects_cells_by_task_method_and_seed_and_collects_only_their_data(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    path = write_experiment(
        tmp_path / "e.yaml", datasets, tmp_path / "out", scale="smoke", datasets_root=str(tmp_path / "d"),
        tasks={"closed_drawer": {"task": "drawer-closed-task", "prior": "drawer-closed-prior"},
               "pick_place": {"task": "pickplace-task", "prior": "pickplace-prior"}},
    )  # fmt: skip
    exp = load_experiment(path, recipes_dir=RECIPES)
    assert select(exp, ()) is exp
    pick = select(exp, ["pick_place"])
    assert {c.task for c in pick.cells} == {"pick_place"} and len(pick.cells) == 4
    assert set(pick.recipes.values()) == {RECIPES / "pickplace-task.yaml", RECIPES / "pickplace-prior.yaml"}
    bc = select(exp, ["bc_all"])
    assert [c.label for c in bc.cells] == [
        f"{t}/bc_all/seed{s}" for t in ("closed_drawer", "pick_place") for s in (0, 1)
    ]
    # across kinds the names intersect: one task's method, one seed
    one = select(exp, ["pick_place", "bc_all", "seed1"])
    assert [c.label for c in one.cells] == ["pick_place/bc_all/seed1"]
    assert "1 tasks x 1 methods x 1 seeds = 1 runs (1 new)" in describe(one)
    two = select(exp, ["cog", "bc_all", "seed0"])
    assert [c.label for c in two.cells] == [
        f"{t}/{m}/seed0" for t in ("closed_drawer", "pick_place") for m in ("cog", "bc_all")
    ]
    with pytest.raises(ExperimentError, match="no task, method or seed named \\['pickplace', 'seed7'\\]"):
        select(exp, ["pickplace", "seed7"])


def test_grid_runs_resumes_and_reports(datasets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    exp = load_experiment(write_experiment(tmp_path / "e.yaml", datasets, out))
    # Interrupt one run after its first checkpoint: train it to step 3 by hand, as if killed there.
    first = exp.cells[0]
    short = dataclasses.replace(first, config=dataclasses.replace(first.config, steps=3))
    run = train_offline(short.config)
    write_run_record(run, "train", first.config)  # as the experiment started it
    assert cell_status(first) == "partial"

    results = run_experiment(exp)
    assert [r["status"] for r in results] == ["trained"] * 4
    assert all(cell_status(c) == "done" for c in exp.cells)
    steps = [row["step"] for row in read_metrics(run / "metrics.jsonl")]
    assert max(steps) == 6  # the interrupted run went on from its checkpoint to the end

    again = run_experiment(exp)  # nothing left to do
    assert [r["status"] for r in again] == ["done"] * 4
    # A run recorded before a config field existed (here: extend_to) reads as that field's default, not as changed.
    record = json.loads((run / "run.json").read_text())
    del record["config"]["extend_to"]
    (run / "run.json").write_text(json.dumps(record))
    assert cell_status(first) == "done"

    report = write_report([out], out / "report")
    runs = find_runs([out])
    assert len(runs) == 4 and all(r.finished for r in runs)
    cog = [r.success for r in runs if r.method == "cog"]
    mean, se = mean_se([v for v in cog if v is not None])
    text = report.read_text()
    assert f"{mean:.2f} ± {se:.2f} (n=2)" in text
    # Where episodes stop: each run's last evaluation recorded the closed drawer's milestones, in task order.
    assert all(list(r.reached) == ["bottom_open", "object_held", "success"] for r in runs)
    opened = mean_se([r.reached["bottom_open"] for r in runs if r.method == "cog"])
    assert f"| closed_drawer | cog | bottom_open {opened[0]:.2f} ± {opened[1]:.2f} (n=2) → object_held" in text
    assert (out / "report" / "success_bars.png").exists() and (out / "report" / "curves_closed_drawer.png").exists()
    summary = json.loads((out / "report" / "results.json").read_text())
    assert summary["closed_drawer"]["bc_all"]["seeds"] == [0, 1]


def test_a_changed_config_is_refused_not_mixed(datasets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    exp = load_experiment(write_experiment(tmp_path / "e.yaml", datasets, out, seeds=[0]))
    run_experiment(dataclasses.replace(exp, cells=exp.cells[:1]))
    changed = write_experiment(tmp_path / "e.yaml", datasets, out, seeds=[0], methods={"cog": {"algo": "cog",
                               "batch_size": 4}, "bc_all": {"algo": "bc"}})  # fmt: skip
    with pytest.raises(ExperimentError, match=r"different config .*batch_size"):
        run_experiment(load_experiment(changed))
    # How a run uses the machine is not part of what it computes: it may resume with another thread count.
    rethreaded = load_experiment(write_experiment(tmp_path / "e.yaml", datasets, out, seeds=[0]), threads=2)
    assert cell_status(rethreaded.cells[0]) == "done"


def test_a_larger_budget_continues_finished_runs_and_a_smaller_one_is_refused(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    exp = load_experiment(write_experiment(tmp_path / "e.yaml", datasets, out, seeds=[0]))
    first = dataclasses.replace(exp, cells=exp.cells[:1])
    run_experiment(first)
    run = first.cells[0].config.out
    assert run is not None
    base = yaml.safe_load((tmp_path / "e.yaml").read_text())["base"]
    longer = load_experiment(write_experiment(tmp_path / "e.yaml", datasets, out, seeds=[0], base={**base, "steps": 9}))
    assert cell_status(longer.cells[0]) == "partial"
    results = run_experiment(dataclasses.replace(longer, cells=longer.cells[:1]))
    assert results[0]["status"] == "trained" and results[0]["step"] == 9
    evaluated = [row["step"] for row in read_metrics(run / "metrics.jsonl") if "eval/success" in row]
    assert evaluated == [3, 6, 9]  # the 6-step run's evaluations, then the new budget's
    assert json.loads((run / "run.json").read_text())["config"]["steps"] == 9
    shorter = load_experiment(
        write_experiment(tmp_path / "e.yaml", datasets, out, seeds=[0], base={**base, "steps": 3})
    )
    with pytest.raises(ExperimentError, match=r"different config \(steps differ\)"):
        cell_status(shorter.cells[0])


def test_a_copied_grid_trains_on_in_its_new_folder_and_leaves_the_original(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    exp = load_experiment(write_experiment(tmp_path / "e.yaml", datasets, out, seeds=[0]))
    run_experiment(dataclasses.replace(exp, cells=exp.cells[:1]))
    original = exp.cells[0].config.out
    assert original is not None
    before = (original / "metrics.jsonl").read_text()
    shutil.copytree(out, tmp_path / "copy")
    base = yaml.safe_load((tmp_path / "e.yaml").read_text())["base"]
    longer = load_experiment(
        write_experiment(tmp_path / "f.yaml", datasets, tmp_path / "copy", seeds=[0], base={**base, "steps": 9})
    )
    copied = longer.cells[0].config.out
    assert copied is not None and copied != original
    assert cell_status(longer.cells[0]) == "partial"  # its run.json still names the original folder as `out`
    results = run_experiment(dataclasses.replace(longer, cells=longer.cells[:1]))
    assert results[0]["status"] == "trained" and results[0]["step"] == 9
    evaluated = [row["step"] for row in read_metrics(copied / "metrics.jsonl") if "eval/success" in row]
    assert evaluated == [3, 6, 9]
    assert json.loads((copied / "run.json").read_text())["config"]["out"] == str(copied)
    assert (original / "metrics.jsonl").read_text() == before  # the original grid is untouched
    assert cell_status(exp.cells[0]) == "done"
    # Anything else that differs is still refused in the copy.
    changed = load_experiment(write_experiment(tmp_path / "f.yaml", datasets, tmp_path / "copy", seeds=[0],
                                               base={**base, "steps": 9, "batch_size": 4}))  # fmt: skip
    with pytest.raises(ExperimentError, match=r"different config \(batch_size differ\)"):
        cell_status(changed.cells[0])


def test_an_unreadable_run_record_stops_the_grid_before_any_work(datasets: dict[str, Path], tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(tmp_path / "e.yaml", datasets, tmp_path / "out", seeds=[0]))
    folder = exp.cells[1].config.out
    assert folder is not None
    folder.mkdir(parents=True)
    (folder / "run.json").write_text("{not json")
    with pytest.raises(ExperimentError, match=r"bc_all/seed0: cannot read .*run.json"):
        run_experiment(exp)
    assert not (tmp_path / "out" / "closed_drawer" / "cog" / "seed0" / "run.json").exists()  # nothing started
    assert (folder / "run.json").read_text() == "{not json"  # and nothing overwritten


def test_a_failing_run_is_reported_and_the_grid_goes_on(datasets: dict[str, Path], tmp_path: Path) -> None:
    path = write_experiment(
        tmp_path / "e.yaml", datasets, tmp_path / "out", seeds=[0],
        methods={"cog_without_prior": {"algo": "cog", "prior": None}, "bc": {"algo": "bc"}},
    )  # fmt: skip
    # A task entry's prior is merged last, so drop it from the task to make the cog run fail for real.
    spec = yaml.safe_load(path.read_text())
    del spec["tasks"]["closed_drawer"]["prior"]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    results = run_experiment(load_experiment(path))
    assert [r["status"] for r in results] == ["failed", "trained"]
    assert "needs a prior dataset" in results[0]["error"]
    assert (tmp_path / "out" / "closed_drawer" / "cog_without_prior" / "seed0" / "error.txt").exists()


FINETUNE = {
    "members": "cog",
    "base": {"online_steps": 12, "max_episode_steps": 6, "first_batch": 6, "burst_updates": 2, "batch_size": 8,
             "log_every": 6, "eval_every": 6, "eval_episodes": 1, "checkpoint_every": 6, "threads": 1,
             "density_ratio": {"hidden": [16, 16], "online_batch_size": 8, "offline_batch_size": 8}},
    "methods": {"balanced": {}, "single": {"ensemble": False}},
}  # fmt: skip


def test_seeds_from_the_command_line_replace_the_files_for_offline_and_finetuning_runs(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    """`--seeds 3 4` checks a result on seeds it was not tuned on: the ensemble is built from the new seeds' runs
    only, beside the file's runs in the same folders; a section's own seeds give way too."""
    out = tmp_path / "out"
    section = {**FINETUNE, "seeds": [0]}
    path = write_experiment(tmp_path / "e.yaml", datasets, out, methods={"cog": {"algo": "cog"}}, finetune=section)
    assert [c.seed for c in load_experiment(path).finetune_cells] == [0, 0]
    exp = load_experiment(path, seeds=[3, 4])
    assert [c.label for c in exp.cells] == ["closed_drawer/cog/seed3", "closed_drawer/cog/seed4"]
    assert exp.seeds == (3, 4) and exp.cells[0].config.out == out / "closed_drawer" / "cog" / "seed3"
    cog = {c.seed: c.config.out for c in exp.cells}
    by_label = {c.label: c.config for c in exp.finetune_cells}
    assert sorted(by_label) == [f"closed_drawer/finetune/{m}/seed{k}" for m in ("balanced", "single") for k in (3, 4)]
    assert by_label["closed_drawer/finetune/balanced/seed4"].runs == (cog[4], cog[3])
    for bad in ([], [1, 1], [-1]):
        with pytest.raises(ExperimentError, match="seeds must be distinct integers >= 0"):
            load_experiment(path, seeds=bad)


def test_a_finetune_section_tunes_the_grids_runs_after_them_resumes_and_reports(
    datasets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    cog_only = {"cog": {"algo": "cog"}}
    path = write_experiment(tmp_path / "e.yaml", datasets, out, methods=cog_only, finetune=FINETUNE)
    exp = load_experiment(path)
    assert [c.label for c in exp.finetune_cells] == [
        f"closed_drawer/finetune/{m}/seed{k}" for k in (0, 1) for m in ("balanced", "single")
    ]
    cog = {c.seed: c.config.out for c in exp.cells if c.method == "cog"}
    by_label = {c.label: c for c in exp.finetune_cells}
    # Each seed's own COG run comes first: the single-agent ablation of seed 1 fine-tunes COG seed 1.
    single1 = by_label["closed_drawer/finetune/single/seed1"].config
    assert single1.runs == (cog[1], cog[0]) and not single1.ensemble and single1.seed == 1
    assert by_label["closed_drawer/finetune/balanced/seed0"].config.runs == (cog[0], cog[1])
    assert single1.out == out / "closed_drawer" / "finetune" / "single" / "seed1"

    # Chosen alone, fine-tuning waits for members that are not trained, and trains nothing.
    alone = select(exp, ["single"])
    assert not alone.cells and len(alone.finetune_cells) == 2
    assert [r["status"] for r in run_experiment(alone)] == ["waiting", "waiting"]
    assert not (out / "closed_drawer" / "cog").exists()

    # The whole grid, with the first fine-tuning run failing in its 4th update (after the checkpoint that follows
    # the burst of 2): it is reported, the grid goes on, and the next run of the file resumes it.
    original, calls = PessimisticEnsemble.update, {"n": 0}

    def failing(self: PessimisticEnsemble, batch: Any) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return original(self, batch)

    with monkeypatch.context() as patch:
        patch.setattr(PessimisticEnsemble, "update", failing)
        results = run_experiment(exp)
    assert [r["status"] for r in results] == ["trained"] * 2 + ["failed"] + ["trained"] * 3
    crashed = exp.finetune_cells[0]
    assert finetune_status(crashed) == "partial"
    saved = json.loads((crashed.config.out / "checkpoints" / "latest" / "finetune.json").read_text())
    assert saved["counters"]["online_steps"] == 6  # the checkpoint after the burst

    again = run_experiment(exp)
    assert [r["status"] for r in again] == ["done"] * 2 + ["trained"] + ["done"] * 3
    assert all(finetune_status(c) == "done" for c in exp.finetune_cells)
    rows = read_metrics(crashed.config.out / "metrics.jsonl")
    assert [r["online_steps"] for r in rows if "eval/success" in r] == [0, 6, 12]
    cell = json.loads((crashed.config.out / "cell.json").read_text())
    assert cell == {"task": "closed_drawer", "method": "balanced", "seed": 0, "kind": "finetune"}
    assert "fine-tuning 1 tasks x 2 methods x 2 seeds = 4 runs (4 done)" in describe(exp)

    tuned = [r for r in find_runs([out]) if r.kind == "finetune"]
    assert sorted((r.method, r.seed) for r in tuned) == [("balanced", 0), ("balanced", 1), ("single", 0),
                                                         ("single", 1)]  # fmt: skip
    assert all(r.finished and [s for s, _ in r.curve] == [0, 6, 12] for r in tuned)
    text = write_report([out], out / "report").read_text()
    assert "| closed_drawer | balanced |" in text and "| closed_drawer | single |" in text

    # Another fine-tuning setting is refused, naming it; a changed thread count is not a change.
    changed = dict(FINETUNE, base={**FINETUNE["base"], "burst_updates": 3})  # type: ignore[dict-item]
    with pytest.raises(ExperimentError, match="burst_updates differ"):
        run_experiment(load_experiment(write_experiment(tmp_path / "e2.yaml", datasets, out, methods=cog_only,
                                                        finetune=changed)))  # fmt: skip
    assert all(finetune_status(c) == "done" for c in load_experiment(path, threads=2).finetune_cells)


def test_mean_and_standard_error() -> None:
    mean, se = mean_se([0.2, 0.4, 0.9])
    assert mean == pytest.approx(0.5)
    assert se == pytest.approx(math.sqrt(((0.3**2) + (0.1**2) + (0.4**2)) / 2) / math.sqrt(3))
    assert math.isnan(mean_se([0.7])[1])


def test_demo_command_trains_reports_and_prints_both_success_rates(
    datasets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from robot_rl.cli import main

    path = write_experiment(tmp_path / "demo.yaml", datasets, tmp_path / "out", seeds=[0])
    main(["demo", "--experiment", str(path)])
    printed = capsys.readouterr().out
    runs = {r.method: r for r in find_runs([tmp_path / "out"])}
    for method in ("cog", "bc_all"):
        assert f"{method:>8} on closed_drawer: success {runs[method].success:.2f} from" in printed
    assert f"report: {tmp_path / 'out' / 'report' / 'report.md'}" in printed
    assert re.search(r"^time: datasets \d+\.\d min, training and evaluation \d+\.\d min", printed, re.M)
    # The experiment and report commands see the finished grid.
    main(["experiment", str(path), "--dry-run"])
    assert "2 done" in capsys.readouterr().out
    main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "r")])
    assert "| closed_drawer |" in capsys.readouterr().out and (tmp_path / "r" / "report.md").exists()


def test_report_on_nothing_or_a_broken_record_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from robot_rl.cli import main

    for args, message in (
        ([str(tmp_path / "missing")], "no such folder"),
        ([str(tmp_path)], "no training or fine-tuning runs"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["report", *args])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"command": "train", "conf')  # cut off mid-write
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path)])
    assert f"{tmp_path / 'run' / 'run.json'}: cannot read the run record" in capsys.readouterr().err
    # A readable record with a malformed metrics row (a milestone rate that is not a number) names the run's folder.
    (tmp_path / "run" / "run.json").write_text('{"command": "train", "config": {"steps": 5}}')
    row = {"step": 5, "eval/success": 0.5, "eval/ever_success": 0.5, "eval/reached/bottom_open": "half"}
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path)])
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run'}: its run record, cell.json or metrics.jsonl has a malformed entry" in err
    assert "half" in err


@pytest.mark.parametrize("path", sorted((RECIPES.parents[1] / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_experiment_files_load(path: Path) -> None:
    exp = load_experiment(path, recipes_dir=RECIPES)
    assert exp.cells and all(cell.config.algo in ("cog", "cql", "bc", "sac") for cell in exp.cells)


@pytest.mark.parametrize("beside", ["live_curve", "export_curve"])
def test_the_report_sets_a_deployed_average_beside_what_it_averages(beside: str) -> None:
    from robot_rl.report import RunSummary, _beside_section

    def run(seed: int, curve: list[tuple[int, float]], other: list[tuple[int, float]]) -> RunSummary:
        return RunSummary(Path(f"s{seed}"), "closed_drawer", "cog_avg", seed, 30, True, curve[-1][1], None, 50,
                          curve=curve, **{beside: other})  # type: ignore[arg-type]  # fmt: skip

    a = run(0, [(10, 0.2), (20, 0.5), (30, 0.8)], [(10, 0.2), (20, 0.7), (30, 0.6)])
    b = run(1, [(10, 0.0), (20, 0.4), (30, 0.9)], [(10, 0.1), (20, 0.1), (30, 0.5)])
    plain = run(2, [(10, 0.0), (20, 0.1), (30, 0.3)], [])  # nothing evaluated beside it: left out
    lines = _beside_section([a, b, plain], beside, "Title", ("deployed (average)", "other"))
    assert lines[0] == "## Title (same evaluation episodes)" and "| other, final |" in lines[2]
    rows = [line for line in lines if line.startswith("| closed_drawer")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2] == "0.85 ± 0.05 (n=2)" and cells[3] == "0.55 ± 0.05 (n=2)"
    diffs = [0.0, -0.2, 0.2, -0.1, 0.3, 0.4]
    mean, se = mean_se(diffs)
    assert cells[4] == f"{mean:.2f} ± {se:.2f} (n=6)" and cells[5] == "3 / 2 / 1"
    assert _beside_section([plain], beside, "Title", ("a", "b")) == []
