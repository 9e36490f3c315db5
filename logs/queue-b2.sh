#!/bin/bash
cd /work/main && . .venv/bin/activate
while kill -0 4429 2>/dev/null; do sleep 10; done
robot-rl experiment experiments/cog-state-bc-anchor.yaml --workers 1 --threads 1 --only closed_drawer cog_bc003 seed0 > logs/bc-anchor-s0.log 2>&1
