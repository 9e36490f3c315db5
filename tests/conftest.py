"""Shared fixtures for the `sim_envs` tests: environments that are closed again after use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from sim_envs.env import ManipulationEnv

EnvFactory = Callable[..., ManipulationEnv]


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
