"""Shared fixtures for the `sim_envs` tests: environments that are closed again after use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sim_envs.env import ManipulationEnv

EnvFactory = Callable[..., ManipulationEnv]


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
