#!/usr/bin/env bash
# Choosing the DiT phase of the fourth SepGRPO nano proof on a lent GPU (a benchmark script, not a test).
#
#   bash bench/proof4_gpu_sweep.sh STAGE3_MODEL OUTDIR [DEADLINE_S]
#
# Run A: `configs/sepgrpo_nano_proof4.yaml` as committed (MLLM phase, then DiT phase V-A). Once A's MLLM phase has
# written its checkpoint (step 80), runs B-D resume from it into their own folders with another DiT phase each
# (the proof3 procedure, `--resume=... --allow_config_change=[...]`). At DEADLINE_S (default 450 s) every run's
# newest checkpoint is evaluated with `thinkgen eval nano` on the GPU (composition 140 x 2 think off, text and
# editing 32 x 2 think off / on); the stage-3 model and A's step-80 model likewise. GPU numbers rank the variants;
# the proof itself is the CPU run (bench/results/sepgrpo_nano_proof4.md).
set -u
M=${1:?usage: bash bench/proof4_gpu_sweep.sh STAGE3_MODEL OUTDIR [DEADLINE_S]}
OUT=${2:?usage}
DEADLINE=${3:-450}
W=/tmp/p4
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=3
. bench/gpu_env.sh
gpu_wheels "$W/pip.log" || exit 1    # wheels the machine lacks (diffusers, our transformers)
T0=$(date +%s)
gpu_env "$OUT/env.txt"
SG="python3 -m thinkgen.rl.sepgrpo --config configs/sepgrpo_nano_proof4.yaml --model_dir=$M --device=cuda
    --progress=false --save_every=25 --keep_last=0 --dit.steps=300"
$SG --output_dir=$W/A > "$W/A.log" 2>&1 &
CK=$W/A/checkpoints/step-00000080
while [ ! -f "$CK/trainer_state/state.json" ]; do
  sleep 3
  if [ $(( $(date +%s) - T0 )) -gt $(( DEADLINE - 120 )) ]; then echo "no step-80 checkpoint in time"; break; fi
done
echo "step 80 at +$(( $(date +%s) - T0 ))s"
ALL="composition/single_object: 1.0, composition/two_object: 0.5, composition/counting: 2.0, composition/colors: 0.5"
ALL="$ALL, composition/position: 1.0, composition/color_attr: 0.5, composition/compound: 1.0"
R="--resume=$CK --dit.lr=5e-4"
CH="--allow_config_change=[dit.steps, dit.lr, dit.scenario_weights, dit.prompts_per_step, save_every, keep_last]"
$SG $R --output_dir=$W/B "--dit.scenario_weights={$ALL}" "$CH" > "$W/B.log" 2>&1 &
$SG $R --output_dir=$W/C "--dit.scenario_weights={$ALL, text: 0.5, editing: 0.5}" "$CH" > "$W/C.log" 2>&1 &
$SG $R --output_dir=$W/D "--dit.scenario_weights={$ALL}" --dit.prompts_per_step=8 "$CH" > "$W/D.log" 2>&1 &
EV="python3 -m thinkgen.cli eval nano --device cuda --seeds 2 --n-per-family 32 --n-composition 140"
$EV --model "$M" --out "$W/ev_stage3" --families composition,text,editing,reasoning > "$W/ev_stage3.log" 2>&1
$EV --model "$CK/model" --out "$W/ev_step80" --families composition,text,editing,reasoning > "$W/ev_step80.log" 2>&1
while [ $(( $(date +%s) - T0 )) -lt "$DEADLINE" ]; do sleep 5; done
pkill -f thinkgen.rl.sepgrpo; sleep 3
for r in A B C D; do
  last=$(ls -d $W/$r/checkpoints/step-* 2>/dev/null | sort | tail -1)
  echo "$r: newest checkpoint ${last:-none}"
  tr '\r' '\n' < "$W/$r.log" | grep -v '^\s*$' | grep -i "error\|Traceback" | head -3
  [ -n "$last" ] && $EV --model "$last/model" --out "$W/ev_$r" --families composition,text,editing > "$W/ev_$r.log" 2>&1 &
done
wait
python3 - "$W" "$OUT" <<'EOF'
import json, sys, pathlib
sys.path.insert(0, ".")
from bench.eval_summary import flat_summary
w, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
rows = {}
for d in sorted(w.glob("ev_*")):
    f = d / "results.json"
    if not f.is_file():
        continue
    rows[d.name] = flat_summary(f, digits=3)
for r in "ABCD":
    m = w / r / "logs" / "metrics.jsonl"
    if m.is_file():
        (out / f"metrics_{r}.jsonl").write_text(m.read_text())
(out / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
keys = ["composition_off", "composition/counting_off", "composition/single_object_off", "composition/position_off",
        "composition/compound_off", "composition_on", "text_off", "text_on", "editing_off", "editing_on", "reasoning_on"]
print("run " + " ".join(k.replace("composition", "c") for k in keys))
for n, row in rows.items():
    print(n, " ".join(str(row.get(k, "-")) for k in keys))
EOF
tar czf "$OUT/logs.tgz" -C "$W" $(cd "$W" && ls *.log) 2>/dev/null
echo "done at +$(( $(date +%s) - T0 ))s"
