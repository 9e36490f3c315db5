"""Shared fixtures: environments that are closed again after use, checks of mixed-precision training, and a loader
for the diagnostic scripts in experiments/ (plain files, not a package)."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from sim_envs.env import ManipulationEnv

EnvFactory = Callable[..., ManipulationEnv]
Fp32Check = Callable[[list[torch.nn.Module], list[torch.optim.Optimizer]], None]
PairedUpdates = Callable[[Any, Any, Any, str], tuple[dict[str, float], dict[str, float]]]
ScriptLoader = Callable[[str], ModuleType]
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One torch thread and a fixed seed for every test: fast and reproducible on a small CI machine, and the same
    floating-point sums on both sides of a resume test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_env() -> Iterator[EnvFactory]:
    """Build fresh environments (one physics client each); every one built is closed at teardown."""
    envs: list[ManipulationEnv] = []

    def make(scene: str = "drawer", **kwargs: Any) -> ManipulationEnv:
        env = ManipulationEnv(scene, **kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture(scope="module")
def drawer_env() -> Iterator[ManipulationEnv]:
    """A drawer env without images, for tests that only read the privileged state; shared within a module."""
    env = ManipulationEnv("drawer", include_image=False, privileged_state=True)
    yield env
    env.close()


@pytest.fixture(scope="module")
def pick_place_env() -> Iterator[ManipulationEnv]:
    """A pick-place env without images, for tests that only read the privileged state; shared within a module."""
    env = ManipulationEnv("pick_place", include_image=False, privileged_state=True)
    yield env
    env.close()


@pytest.fixture
def assert_fp32_training_state() -> Fp32Check:
    """Assert that every parameter of the modules and every tensor state of the optimisers is fp32: what bf16
    autocast must leave alone (it casts copies for the forward, never the master weights or Adam's moments)."""

    def check(modules: list[torch.nn.Module], optimizers: list[torch.optim.Optimizer]) -> None:
        for module in modules:
            assert all(p.dtype == torch.float32 for p in module.parameters()), type(module).__name__
        for optimizer in optimizers:
            state = optimizer.state_dict()["state"]
            assert state, "the optimiser has not stepped"
            assert all(t.dtype == torch.float32 for s in state.values() for t in s.values() if t.dim() > 0)

    return check


@pytest.fixture
def fp32_and_bf16_updates() -> PairedUpdates:
    """One update of an fp32 agent and one of its bf16-autocast copy on the same batch and torch seed; returns
    (fp32 metrics, bf16 metrics) after asserting the bf16 ones finite and their `key` changed by rounding (so bf16
    was in use). Callers compare the rest at bf16's tolerance."""

    def run(full: Any, half: Any, batch: Any, key: str) -> tuple[dict[str, float], dict[str, float]]:
        torch.manual_seed(1)
        expected = full.update(batch)
        torch.manual_seed(1)
        got = half.update(batch)
        assert all(math.isfinite(v) for v in got.values()), got
        assert got[key] != expected[key], f"{key} is bit-identical: the update did not run in bf16"
        return expected, got

    return run


@pytest.fixture
def experiment_script() -> ScriptLoader:
    """Import experiments/<name>.py as a module (the scripts are run as files, so they are not importable by name)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
