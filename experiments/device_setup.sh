#!/usr/bin/env bash
# Run robot-rl's grids on a GPU box whose Python has no PyBullet wheel on PyPI (the device machine here: Python 3.12,
# PyTorch preinstalled, no network). Two steps:
#   here (with network):  bash experiments/device_setup.sh prepare
#       downloads the pure-Python dependencies the box lacks into .whl/ and a PyBullet source distribution without
#       its data files (robot-rl loads only its own URDFs; 80 MB -> 8.5 MB) into .pyb/; add both folders to
#       .git/info/exclude and carry them (with the datasets the grid trains on) to the box.
#   there:                bash experiments/device_setup.sh install && export PYTHONPATH=/tmp/site:$PWD
#       installs the wheels and builds PyBullet into /tmp/site (~1 min on 16 cores); then `python3 -m robot_rl
#       experiment FILE` runs as anywhere else, evaluations included.
# Used for experiments/cog-image-gpu.yaml (its header has what ran and what it measured).
set -euo pipefail
PYBULLET=3.2.7
case "${1:-}" in
prepare)
    py=$(python3 -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
    target=${TARGET_PYTHON:-3.12}
    mkdir -p .whl .pyb
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$target" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
        gymnasium==1.4.0 farama-notifications minari==0.5.4 tyro docstring-parser typeguard shtab
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "pybullet==$PYBULLET"
    tar xzf "$tmp/pybullet-$PYBULLET.tar.gz" -C "$tmp"
    find "$tmp/pybullet-$PYBULLET/examples/pybullet/gym/pybullet_data" -type f -not -name __init__.py -delete
    rm -rf "$tmp/pybullet-$PYBULLET/examples/pybullet/gym/pybullet_envs/examples"
    tar czf ".pyb/pybullet-$PYBULLET-stripped.tar.gz" -C "$tmp" "pybullet-$PYBULLET"
    rm -rf "$tmp"
    echo "prepared .whl/ and .pyb/ for Python $target (this machine runs $py)"
    ;;
install)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    rm -rf /tmp/pyb && mkdir -p /tmp/pyb && tar xzf ".pyb/pybullet-$PYBULLET-stripped.tar.gz" -C /tmp/pyb
    (cd "/tmp/pyb/pybullet-$PYBULLET" && python3 -m pip install -q --no-build-isolation --no-deps --no-index \
        --no-cache-dir --target /tmp/site .)
    PYTHONPATH=/tmp/site:$PWD python3 -c "import pybullet, sim_envs; print('pybullet', pybullet.__file__)"
    ;;
*)
    echo "usage: bash experiments/device_setup.sh prepare|install" >&2
    exit 2
    ;;
esac
