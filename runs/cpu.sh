#!/usr/bin/env bash
# ThinkGen-Nano end to end on a CPU (2 cores): train from scratch, evaluate, ship.
#   bash runs/cpu.sh [OUT] [PRESET]      PRESET: quick (the shipped checkpoint; as measured on the shared 2-core box
#                                          ~81 min up to dit3 + 53 min for the dit4 focus stage), full (not measured),
#                                          smoke = seconds (tests)
# Every stage is resumable: rerunning the same command skips finished stages.
set -euo pipefail
OUT=${1:-runs/nano_quick}
PRESET=${2:-quick}
PY=${PY:-python}

# 1. data -> VAE (subprocess, 1 thread) || MLLM SFT (1 thread) -> DiT stage 1 -> DiT stage 2 (+ dit3) -> focus data
#    -> dit4 (text/editing-weighted continuation) -> released layout
$PY -m thinkgen.cli train nano --out "$OUT" --preset "$PRESET" --skip-eval

# 2. held-out evaluation: every family, think off and on, 4 seeds; JSON + markdown table + image grid
$PY -m thinkgen.cli eval nano --model "$OUT/final" --out "$OUT/eval_full" --seeds 4 --n-per-family 12 --n-composition 28
$PY -m thinkgen.cli eval nano --model "$OUT/final" --out "$OUT/eval_understanding" --families understanding --n-per-family 96

# 3. ship: the released-layout folder becomes the package's default model (<= 60 MB)
rm -rf thinkgen/assets/nano && mkdir -p thinkgen/assets && cp -r "$OUT/final" thinkgen/assets/nano
du -sh thinkgen/assets/nano
$PY -m thinkgen.cli generate "two red circles left of a blue square" --think --out /tmp/thinkgen-nano-check
