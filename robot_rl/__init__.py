"""robot-rl: offline RL with skill stitching (COG) from images, then online fine-tuning with balanced replay.

The learning core imports torch and numpy only; simulated scenes live in `sim_envs` and are reached through
gymnasium ids, and the robot's ROS 2 shells live in `ros_nodes`.
"""

__version__ = "0.1.0"
