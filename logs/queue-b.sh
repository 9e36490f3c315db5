#!/bin/bash
cd /work/main && . .venv/bin/activate
COMMON="--agent.keep-cql --agent.no-cql-importance-sampling --agent.backup deterministic --agent.target-range 0 100 --online-steps 20000 --eval-every 2500 --eval-episodes 20 --checkpoint-every 2500 --threads 1 --no-progress"
for K in 1 2; do
  robot-rl finetune --runs runs/experiments/cog-state/closed_drawer/cog/seed$K --no-ensemble --out runs/finetune/closed-keepcql-single-s$K --seed $K $COMMON > logs/ft-closed-single-s$K.log 2>&1
done
