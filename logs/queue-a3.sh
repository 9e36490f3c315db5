#!/bin/bash
cd /work/main && . .venv/bin/activate
sleep 120
while pgrep -f "queue-a2.sh" >/dev/null; do sleep 10; done
robot-rl experiment experiments/cog-state-bc-anchor.yaml --workers 1 --threads 1 --only closed_drawer cog_bc003 seed1 > logs/bc-anchor-s1.log 2>&1
