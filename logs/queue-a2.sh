#!/bin/bash
cd /work/main && . .venv/bin/activate
while pgrep -f "cog_n5 seed0" >/dev/null; do sleep 10; done
robot-rl experiment experiments/cog-state-nstep.yaml --workers 1 --threads 1 --only closed_drawer cog_n5_prior seed0 > logs/nstep-n5prior-s0.log 2>&1
