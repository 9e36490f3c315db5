"""PyBullet scenes for robot-rl: a WidowX-class arm, a two-drawer cabinet and a pick-place tray, scripted skills.

Importing this package registers the gymnasium ids `robot_rl/Drawer-v0` and `robot_rl/PickPlace-v0`.
"""

import gymnasium as gym

from sim_envs.env import ACTION_NAMES, ACTION_SCALES, STATE_NAMES, ManipulationEnv

ENV_IDS = {"drawer": "robot_rl/Drawer-v0", "pick_place": "robot_rl/PickPlace-v0"}

for _scene, _id in ENV_IDS.items():
    if _id not in gym.registry:
        # Horizons depend on the initial condition, so the env truncates itself (no TimeLimit wrapper).
        gym.register(id=_id, entry_point="sim_envs.env:ManipulationEnv", kwargs={"scene": _scene})

__all__ = ["ACTION_NAMES", "ACTION_SCALES", "ENV_IDS", "STATE_NAMES", "ManipulationEnv"]
