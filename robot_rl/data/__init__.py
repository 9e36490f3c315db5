"""Datasets: the on-disk format (Minari, HDF5), validation, inspection and loading into flat replay arrays.

Nothing here imports torch or pybullet; collection of scripted data lives in `sim_envs.collect`.
"""
