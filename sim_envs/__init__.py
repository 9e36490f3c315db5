"""PyBullet scenes for robot-rl: a WidowX-class arm, a two-drawer cabinet and a pick-place tray, scripted skills.

Importing this package registers the gymnasium ids `robot_rl/Drawer-v1`, `robot_rl/PickPlace-v0` (the current
version of each scene, `ENV_IDS`) and `robot_rl/Drawer-v0`, the drawer scene before its fingertip floor (the arm
could drive the fingertips into the drawer's floor), kept to evaluate runs trained on its data.
"""

import gymnasium as gym

from sim_envs.env import ACTION_NAMES, ACTION_SCALES, STATE_NAMES, ManipulationEnv

ENV_IDS = {"drawer": "robot_rl/Drawer-v1", "pick_place": "robot_rl/PickPlace-v0"}
"""The current environment of each scene; datasets collected in it are named `<recipe>-<scale>-v<version>`."""

_REGISTERED: dict[str, dict[str, object]] = {
    **{env_id: {"scene": scene} for scene, env_id in ENV_IDS.items()},
    "robot_rl/Drawer-v0": {"scene": "drawer", "tcp_floor": 0.015},
}
for _id, _kwargs in _REGISTERED.items():
    if _id not in gym.registry:
        # Horizons depend on the initial condition, so the env truncates itself (no TimeLimit wrapper).
        gym.register(id=_id, entry_point="sim_envs.env:ManipulationEnv", kwargs=_kwargs)


def env_version(scene: str) -> int:
    """The version of the scene's current environment (the `N` of `-vN` in `ENV_IDS`)."""
    return int(ENV_IDS[scene].rsplit("-v", 1)[1])


__all__ = ["ACTION_NAMES", "ACTION_SCALES", "ENV_IDS", "STATE_NAMES", "ManipulationEnv", "env_version"]
