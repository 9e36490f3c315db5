"""experiments/critic_probe.py: the alternative actions whose Q-values the probe prints next to the policy's."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np

from sim_envs.env import ACTION_SCALES

ScriptLoader = Callable[[str], ModuleType]  # conftest's `experiment_script` fixture


def test_alternatives_change_only_what_each_names(experiment_script: ScriptLoader) -> None:
    alternatives = experiment_script("critic_probe").alternatives
    action = np.array([0.5, -0.2, -0.4, 0.3, 0.9], np.float32)  # x, y, z, yaw, gripper
    offset = np.array([0.004, -0.5, 0.02])  # TCP - object (m): 4 mm in x (within a step), far in y
    given = action.copy()
    rows = alternatives(action, offset)
    assert rows.shape == (5, 5) and rows.dtype == np.float32
    policy, close, opened, aimed, rise = rows
    np.testing.assert_array_equal(policy, action)
    np.testing.assert_array_equal(close, [*action[:4], 1.0])
    np.testing.assert_array_equal(opened, [*action[:4], -1.0])
    # Aimed: x-y toward the object, as far as one step reaches (clipped), z, yaw and gripper kept.
    np.testing.assert_allclose(aimed[:2], [-0.004 / ACTION_SCALES[0], 1.0], rtol=1e-6)
    np.testing.assert_array_equal(aimed[2:], action[2:])
    # Rise: straight up at full speed, no yaw, the policy's gripper command kept.
    np.testing.assert_array_equal(rise, [0.0, 0.0, 1.0, 0.0, action[4]])
    np.testing.assert_array_equal(action, given)  # the input is left as it was
