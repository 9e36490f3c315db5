#!/bin/bash
cd /work/main && . .venv/bin/activate
while kill -0 2059 2>/dev/null; do sleep 10; done
robot-rl experiment experiments/cog-state-nstep.yaml --workers 1 --threads 1 --only closed_drawer cog_n5 seed0 > logs/nstep-n5-s0.log 2>&1
