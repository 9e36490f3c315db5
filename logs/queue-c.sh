#!/bin/bash
cd /work/main && . .venv/bin/activate
while kill -0 6735 2>/dev/null; do sleep 5; done
robot-rl experiment experiments/cog-state-bc-anchor.yaml --workers 1 --threads 1 --only closed_drawer cog_bc010 seed0 > logs/bc010-s0.log 2>&1
