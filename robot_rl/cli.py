"""The `robot-rl` console script: one subcommand per job, each a typed config dataclass turned into flags by tyro.

Simulator-specific commands import `sim_envs` inside the command, so that `import robot_rl` never pulls in
pybullet (the learning core reaches environments through gymnasium ids only).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import tyro

from robot_rl.data.episodes import DatasetError
from robot_rl.experiment import ExperimentError
from robot_rl.policy import CheckpointError
from robot_rl.report import ReportError
from robot_rl.runs import new_run_dir, write_run_record
from robot_rl.train.finetune import FinetuneConfig
from robot_rl.train.offline import OfflineConfig, TrainingError


@dataclass(frozen=True)
class GalleryConfig:
    """Render every scene and initial condition as the policy's camera sees it, and film every scripted skill."""

    out: Path | None = None
    """Output folder (default: runs/gallery-<timestamp>)."""
    image_size: int = 48
    """Side of the policy's camera image in pixels."""
    grid_seeds: int = 4
    """Columns of the image grid: initial states drawn with seeds 0..grid_seeds-1."""
    skills: tuple[str, ...] = ()
    """Skills to film (default: every single skill and chained solution)."""
    seed: int = 0
    """Seed of the filmed episodes."""
    noise: float = 0.1
    """Std of the Gaussian action noise of the scripted skills (COG used 0.1)."""
    render_size: int = 256
    """Side of the large render shown beside the camera image in the videos."""
    progress: bool = True
    """Show progress bars."""


def gallery(cfg: GalleryConfig, prefix: str = "gallery") -> Path:
    from robot_rl.media import write_png
    from sim_envs.gallery import scene_grid, skill_videos

    folder = new_run_dir(cfg.out, prefix)
    write_run_record(folder, prefix, cfg)
    grid = write_png(folder / "scenes_grid.png", scene_grid(cfg.image_size, range(cfg.grid_seeds)))
    videos = skill_videos(
        folder / "videos",
        cfg.skills,
        seed=cfg.seed,
        noise=cfg.noise,
        image_size=cfg.image_size,
        render_size=cfg.render_size,
        progress=cfg.progress,
    )
    summary = {
        name: {"success": r.success, "task_success": r.task_success, "steps": r.steps, "video": str(path)}
        for name, (path, r) in videos.items()
    }
    (folder / "skills.json").write_text(json.dumps(summary, indent=2) + "\n")
    width = max(len(name) for name in summary)
    print(f"\n{'skill':<{width}}  success  steps  (seed {cfg.seed}, noise {cfg.noise})")
    for name, (_, result) in videos.items():
        outcome = {True: "yes", False: "no", None: "n/a"}[result.success]
        print(f"{name:<{width}}  {outcome:>7}  {result.steps:>5}")
    print(f"\nimage grid: {grid}\nvideos:     {folder / 'videos'}\nrecord:     {folder / 'run.json'}")
    return folder


@dataclass(frozen=True)
class DemoConfig:
    """The main job: collect the closed-drawer datasets, train COG and BC on them, evaluate both from the closed
    drawer (which no task trajectory starts from) and report. Rerunning resumes where it stopped."""

    image: bool = False
    """Learn from 48x48 camera images (COG's setting; much slower on a CPU) instead of the privileged state."""
    experiment: Path | None = None
    """Experiment file to run instead (default: experiments/demo.yaml, or demo-image.yaml with --image)."""


def demo(cfg: DemoConfig) -> Path:
    from robot_rl.experiment import ensure_datasets, load_experiment, run_experiment
    from robot_rl.report import find_runs, summarise, write_report
    from robot_rl.train.offline import eval_condition

    path = cfg.experiment or Path("experiments") / ("demo-image.yaml" if cfg.image else "demo.yaml")
    if not path.exists():
        raise SystemExit(f"robot-rl demo: {path} not found; run the demo from the repository's root folder")
    exp = load_experiment(path)
    print(f"robot-rl demo: {exp.name}: collecting datasets (if missing), then training {len(exp.cells)} runs")
    start = time.perf_counter()
    ensure_datasets(exp)
    collected = time.perf_counter()
    results = run_experiment(exp, lambda r: print(f"  {r['label']}: {r['status']}"))
    trained = time.perf_counter()
    report = write_report([exp.out], exp.out / "report")
    summary = summarise(find_runs([exp.out]))
    print()
    for task, methods in summary.items():
        for method, row in methods.items():
            runs = [c for c in exp.cells if c.task == task and c.method == method]
            condition = eval_condition(runs[0].config.eval_condition, task, "the task's hard start")
            print(
                f"{method:>8} on {task}: success {row['success_mean']:.2f} from {condition} "
                f"(ever {row['ever_mean']:.2f}; {','.join(map(str, row['episodes']))} episodes per seed)"
            )
    print(f"\nreport: {report}\nruns and videos: {exp.out}/<task>/<method>/seed<k>/videos")
    print(
        f"time: datasets {(collected - start) / 60:.1f} min, training and evaluation {(trained - collected) / 60:.1f} "
        "min (a rerun skips what is done)"
    )
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        raise SystemExit(f"robot-rl demo: {len(failed)} runs failed: {[r['label'] for r in failed]}")
    return report


@dataclass(frozen=True)
class CollectConfig:
    """Collect a scripted dataset from a recipe, in worker processes; rerunning resumes an interrupted collection."""

    recipe: tyro.conf.Positional[Path]
    """Recipe file, e.g. datasets/recipes/drawer-closed-prior.yaml."""
    scale: Literal["smoke", "small", "medium", "paper"] = "small"
    """How many episodes: the recipe gives a count for each scale."""
    workers: int | None = None
    """Worker processes (default: one per CPU core)."""
    root: Path = Path("datasets")
    """Folder the dataset is written into, as ROOT/<recipe name>-<scale>-v<N> (N: the scene's environment version)."""
    progress: bool = True
    """Show a progress bar."""


def collect(cfg: CollectConfig) -> Path:
    from robot_rl.data.inspect import dataset_stats, format_stats
    from sim_envs.collect import collect as run_collection
    from sim_envs.collect import load_recipe

    recipe = load_recipe(cfg.recipe)
    try:
        result = run_collection(recipe, cfg.scale, cfg.root, workers=cfg.workers, progress=cfg.progress)
    except KeyboardInterrupt:
        print(
            "\nrobot-rl: collection interrupted; finished episodes are kept. Run the same command again to resume.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    rate = result.transitions * result.collected_now / max(result.episodes, 1) / max(result.seconds, 1e-9)
    print(
        f"\n{result.folder}: {result.episodes} episodes, {result.transitions} transitions "
        f"({result.collected_now} episodes collected now in {result.seconds:.1f} s, ~{rate:.0f} transitions/s)\n"
    )
    print(format_stats(dataset_stats(result.folder)))
    return result.folder


@dataclass(frozen=True)
class InspectConfig:
    """Validate a dataset and summarise it: statistics, an image grid and a video of a few episodes."""

    dataset: tyro.conf.Positional[Path]
    """Dataset folder, e.g. datasets/drawer-closed-prior-small-v1."""
    check: bool = False
    """Only validate (exit status 2 and the problems on stderr if invalid)."""
    out: Path | None = None
    """Where the statistics, grid and video go (default: DATASET/inspect)."""


def inspect(cfg: InspectConfig) -> None:
    from robot_rl.data.inspect import format_stats, inspect_dataset
    from robot_rl.data.validate import validate_dataset

    if cfg.check:
        report = validate_dataset(cfg.dataset)
        print(f"{cfg.dataset}: valid ({report.episodes} episodes, {report.transitions} transitions)")
        return
    stats, paths = inspect_dataset(cfg.dataset, cfg.out)
    print(format_stats(stats))
    print("\n" + "\n".join(f"{kind + ':':<7} {path}" for kind, path in paths.items()))


def train(cfg: OfflineConfig) -> Path:
    from robot_rl.runs import config_from_dict
    from robot_rl.train.offline import train_offline, train_result

    if cfg.resume is not None:
        record = json.loads((cfg.resume / "run.json").read_text())
        resumed = config_from_dict(OfflineConfig, record["config"], f"{cfg.resume}/run.json: config")
        if cfg.extend_to is not None:
            if cfg.extend_to <= resumed.steps:
                raise SystemExit(
                    f"robot-rl train: --extend-to {cfg.extend_to} must exceed the run's budget of {resumed.steps} steps"
                )
            resumed = replace(resumed, steps=cfg.extend_to, out=cfg.resume)
        run = train_offline(resumed, resume=cfg.resume)
    elif cfg.extend_to is not None:
        raise SystemExit("robot-rl train: --extend-to continues a run; give it with --resume RUN")
    elif cfg.task is None:
        raise SystemExit("robot-rl train: give --task DATASET (and --prior DATASET for cog/sac), or --resume RUN")
    else:
        run = train_offline(cfg)
    last = train_result(run)
    print(f"\nrun: {run}")
    if last:
        print(
            f"evaluation at step {last['step']}: success {last['eval/success']:.2f} "
            f"(ever {last['eval/ever_success']:.2f}) over {int(last['eval/episodes'])} episodes"
        )
    return run


@dataclass(frozen=True)
class EvalCommand:
    """Evaluate a saved policy (a run's policy/ folder) in simulation from an initial condition."""

    policy: tyro.conf.Positional[Path]
    """Policy folder, e.g. runs/cog-.../policy."""
    initial_condition: str = "closed"
    env_id: str | None = None
    """Gymnasium id to evaluate in (default: the one the policy records it was trained in; policies exported before
    it was recorded were trained in robot_rl/Drawer-v0 or robot_rl/PickPlace-v0)."""
    image_size: int = 48
    episodes: int = 50
    workers: int = 2
    videos: int = 2
    max_episode_steps: int | None = None
    """Episode length (default: the initial condition's horizon). A longer one shows whether a policy that fails
    there is slow rather than wrong; the figures the issues measure use the default."""
    binary_actions: tuple[str, ...] | None = None
    """Action components to command at +-1 by the sign of the mean (e.g. gripper; see `PolicySpec.binary_actions`),
    over what the policy records; `--binary-actions` with no names evaluates the tanh of the mean everywhere."""
    out: Path | None = None
    """Where videos and results go (default: POLICY/../eval-<condition>)."""


def evaluate(cmd: EvalCommand) -> None:
    import functools

    from robot_rl.policy import Policy
    from robot_rl.train.evaluate import EvalConfig, evaluate_parallel

    policy = Policy.load(cmd.policy)  # fail here, with the reason, before starting workers
    env_id = cmd.env_id or policy.info.get("env_id")
    if not isinstance(env_id, str):
        raise SystemExit(f"robot-rl eval: {cmd.policy} does not record the env it was trained in; give --env-id")
    if cmd.max_episode_steps is not None and cmd.max_episode_steps < 1:
        raise SystemExit(f"robot-rl eval: --max-episode-steps must be >= 1, got {cmd.max_episode_steps}")
    env_kwargs: dict[str, Any] = {"image_size": cmd.image_size, "privileged_state": True}
    if cmd.max_episode_steps is not None:
        env_kwargs["max_episode_steps"] = cmd.max_episode_steps
    cfg = EvalConfig(
        env_id=env_id,
        env_kwargs=env_kwargs,
        initial_condition=cmd.initial_condition,
        episodes=cmd.episodes,
        workers=cmd.workers,
        videos=cmd.videos,
    )
    out = cmd.out or cmd.policy.parent / f"eval-{cmd.initial_condition}"
    folder = cmd.policy
    if cmd.binary_actions is not None and cmd.binary_actions != policy.spec.binary_actions:
        try:
            spec = dataclasses.replace(policy.spec, binary_actions=tuple(cmd.binary_actions))
        except ValueError as error:
            raise SystemExit(f"robot-rl eval: --binary-actions: {error}") from None
        # The workers load what is evaluated; it is kept beside the results.
        folder = Policy(spec, policy.actor, info=policy.info, versions=policy.versions).save(out / "policy")
    result = evaluate_parallel(functools.partial(Policy.load, folder), cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    print(
        f"{cmd.policy} from {cmd.initial_condition}: success {result.success_rate:.2f} "
        f"(ever {result.ever_success_rate:.2f}) over {len(result.episodes)} episodes; {out}"
    )
    if result.reached_rates():
        print("  reached (any step): " + ", ".join(f"{k} {v:.2f}" for k, v in result.reached_rates().items()))
        print("  failed episodes stopped before: " + ", ".join(f"{k} {n}" for k, n in result.stopped_at().items()))
        undone = ", ".join(f"{k} {v:.2f}" for k, v in result.undone_rates().items())
        print(f"  reached, then undone by the end: {undone}")
        first = ", ".join(f"{k} {v:g}" for k, v in result.first_steps().items())
        print(f"  first reached at step (median over the episodes that reached it): {first}")


@dataclass(frozen=True)
class ExperimentCommand:
    """Run an experiment grid (tasks x methods x seeds) from a YAML file; rerunning resumes it."""

    config: tyro.conf.Positional[Path]
    """Experiment file, e.g. experiments/cog-state.yaml."""
    workers: int | None = None
    """Runs in parallel (default: the file's `workers`); with more than one, each run trains with one thread unless
    the file or `--threads` says otherwise."""
    threads: int | None = None
    """torch threads of every run, over the file (e.g. 1 when the grid shares the machine with other work). Thread
    counts may change between a run's start and its resumption."""
    seeds: tuple[int, ...] | None = None
    """Seeds instead of the file's, for its offline and fine-tuning runs (`--seeds 3 4 5` checks a result on seeds it
    was not tuned on); the runs land beside the file's, in the same folders."""
    collect_workers: int | None = None
    """Worker processes for collecting missing datasets (default: one per core)."""
    report: bool = True
    """Write the report (tables and plots) into OUT/report when the grid is done."""
    dry_run: bool = False
    """Only check the file and say what would run."""
    only: tuple[str, ...] = ()
    """Run only these cells: tasks, methods, seeds (`--only closed_drawer cog seed0`: a cell must match every kind
    named); the others are left as they are."""


def experiment(cmd: ExperimentCommand) -> Path:
    from robot_rl.experiment import describe, ensure_datasets, load_experiment, run_experiment, select
    from robot_rl.report import write_report

    exp = select(load_experiment(cmd.config, workers=cmd.workers, threads=cmd.threads, seeds=cmd.seeds), cmd.only)
    print(describe(exp))
    if cmd.dry_run:
        for cell in exp.cells:
            print(f"  {cell.label}: {cell.config.algo}, {cell.config.steps} steps -> {cell.config.out}")
        for tuned in exp.finetune_cells:
            c = tuned.config
            agents = f"{len(c.runs)} agents" if c.ensemble else "1 agent"
            print(f"  {tuned.label}: {c.replay} replay, {agents}, {c.online_steps} online steps -> {c.out}")
        return exp.out
    ensure_datasets(exp, cmd.collect_workers)

    def show(result: dict[str, object]) -> None:
        if result["status"] == "failed":
            print(f"  {result['label']}: FAILED {result['error']} (see error.txt in its folder)")
        elif result["status"] == "waiting":
            print(f"  {result['label']}: waiting, {result['error']}; a later run of the file starts it")
        else:
            print(f"  {result['label']}: {result['status']}, success {result.get('eval/success', float('nan')):.2f}")

    results = run_experiment(exp, show)
    if cmd.report:
        print(f"report: {write_report([exp.out], exp.out / 'report')}")
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        raise SystemExit(f"robot-rl experiment: {len(failed)} of {len(results)} runs failed; rerun to retry them")
    return exp.out


@dataclass(frozen=True)
class ReportCommand:
    """Tables (success +- s.e. per task and method) and plots from training runs or experiment folders."""

    runs: tyro.conf.Positional[tuple[Path, ...]]
    """Run or experiment folders (searched for runs)."""
    out: Path | None = None
    """Report folder (default: FIRST_RUNS_FOLDER/report)."""


def report(cmd: ReportCommand) -> Path:
    from robot_rl.report import write_report

    path = write_report(list(cmd.runs), cmd.out or cmd.runs[0] / "report")
    print(path.read_text().split("## Plots")[0])
    print(f"report: {path}")
    return path


def finetune(cfg: FinetuneConfig) -> Path:
    from robot_rl.train.finetune import finetune as run_finetune
    from robot_rl.train.offline import train_result

    if cfg.resume is None and not cfg.runs:
        raise SystemExit("robot-rl finetune: give --runs RUN [RUN ...] (offline cog/cql runs), or --resume RUN")
    run = run_finetune(cfg)  # with --resume, the config comes from RUN/run.json (but --threads, --progress)
    last = train_result(run)
    print(f"\nrun: {run}")
    if last:
        print(
            f"evaluation at {int(last['online_steps'])} online steps: success {last['eval/success']:.2f} "
            f"(ever {last['eval/ever_success']:.2f}) over {int(last['eval/episodes'])} episodes"
        )
    return run


def main(args: list[str] | None = None) -> None:
    try:
        _dispatch(args)
    except (DatasetError, TrainingError, ExperimentError, CheckpointError, ReportError) as e:
        print(f"robot-rl: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _dispatch(args: list[str] | None) -> None:
    cfg = tyro.extras.subcommand_cli_from_dict(
        {
            "demo": DemoConfig,
            "gallery": GalleryConfig,
            "collect": CollectConfig,
            "inspect": InspectConfig,
            "train": OfflineConfig,
            "eval": EvalCommand,
            "experiment": ExperimentCommand,
            "report": ReportCommand,
            "finetune": FinetuneConfig,
        },
        prog="robot-rl",
        description="robot-rl: offline RL with skill stitching (COG), online fine-tuning, and a ROS 2 robot path.",
        args=args,
    )
    match cfg:
        case DemoConfig():
            demo(cfg)
        case GalleryConfig():
            gallery(cfg)
        case CollectConfig():
            collect(cfg)
        case InspectConfig():
            inspect(cfg)
        case OfflineConfig():
            train(cfg)
        case EvalCommand():
            evaluate(cfg)
        case ExperimentCommand():
            experiment(cfg)
        case ReportCommand():
            report(cfg)
        case FinetuneConfig():
            finetune(cfg)
        case _:
            raise AssertionError(f"no command for {type(cfg).__name__}")
