#!/usr/bin/env bash
# Does any DiT-GRPO setting make the nano DiT's training reward climb, and held-out composition with it, for two
# seeds? (issue 5 item 6; a benchmark script, not a test). Eight DiT-only phases side by side on one lent GPU, all
# from the same post-MLLM-phase model (proofs 4-6's step-80 checkpoint), then every newest checkpoint and the start
# evaluated on the GPU.
#
#   bash bench/dit_grpo_gpu_sweep.sh START_MODEL OUTDIR [TRAIN_S] [DEVICE]
#
# Every variant = configs/sepgrpo_nano_proof6.yaml with schedule [dit] plus the overrides in VARIANTS below
# (the proof-6 DiT phase is "ctrl"). Training stops at TRAIN_S seconds (default 330) or at dit.steps; the newest
# checkpoint (save_every SWEEP_SAVE, default 25) of each run is then evaluated: composition 140 x 4 seeds think off, text and editing
# 32 x 2 think off / on (SWEEP_TE=0 skips them). GPU numbers rank settings; a proof is a CPU run.
set -u
M=${1:?usage: bash bench/dit_grpo_gpu_sweep.sh START_MODEL OUTDIR [TRAIN_S] [DEVICE]}
OUT=${2:?usage}
TRAIN_S=${3:-330}
DEV=${4:-cuda}
[ -f "$M/model_index.json" ] || { echo "START_MODEL $M is not a checkpoint folder (no model_index.json); pass e.g." \
  "runs/p6A/checkpoints/step-00000080/model"; exit 2; }
[ ! -e "$OUT" ] || [ -d "$OUT" ] || { echo "OUTDIR $OUT exists and is not a folder; pass a folder"; exit 2; }
W=${SWEEP_WORK:-/tmp/dgs}
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${SWEEP_THREADS:-2}
. bench/gpu_env.sh
if [ "$DEV" = cuda ]; then gpu_wheels "$W/pip.log" || exit 1; gpu_env "$OUT/env.txt"; fi
PY=${PY:-python3}
T0=$(date +%s)
VARIANTS=${SWEEP_VARIANTS:-"ctrl0|
ctrl1|--seed=1
lr2e3_s0|--dit.lr=2e-3
lr2e3_s1|--dit.lr=2e-3 --seed=1
ind_s0|--dit.lr=2e-3 --dit.same_noise=false --dit.noise_level=1.0
ind_s1|--dit.lr=2e-3 --dit.same_noise=false --dit.noise_level=1.0 --seed=1
grp_s0|--dit.lr=2e-3 --dit.adv_std=group
lr5e3_s0|--dit.lr=5e-3"}
NAMES=()
while IFS='|' read -r name over; do
  [ -z "$name" ] && continue
  NAMES+=("$name")
  # shellcheck disable=SC2086
  $PY -m thinkgen.rl.sepgrpo --config configs/sepgrpo_nano_proof6.yaml --model_dir="$M" --device="$DEV" \
    --schedule=[dit] --eval_before=false --progress=false --save_every=${SWEEP_SAVE:-25} --keep_last=0 --dit.steps=${SWEEP_STEPS:-200} \
    --output_dir="$W/$name" $over > "$W/$name.log" 2>&1 &
done <<< "$VARIANTS"
EV="$PY -m thinkgen.cli eval nano --device $DEV"
NC=${SWEEP_EVAL_N:-140}
EVC="--n-per-family ${SWEEP_EVAL_F:-32} --n-composition $NC --families composition,text,editing"
$EV --model "$M" --out "$W/ev_start" --seeds 4 --families composition --n-composition $NC --think off \
  > "$W/ev_start.log" 2>&1
[ "${SWEEP_TE:-1}" = 1 ] && $EV --model "$M" --out "$W/ev_start_te" --seeds 2 $EVC > "$W/ev_start_te.log" 2>&1
while [ $(( $(date +%s) - T0 )) -lt "$TRAIN_S" ] && pgrep -f thinkgen.rl.sepgrpo > /dev/null; do sleep 3; done
pkill -f thinkgen.rl.sepgrpo; sleep 3
echo "training stopped at +$(( $(date +%s) - T0 ))s"
for r in "${NAMES[@]}"; do
  last=$(ls -d "$W/$r"/checkpoints/step-* 2>/dev/null | grep -E "/step-[0-9]+$" | sort | tail -1)
  echo "$r: newest checkpoint ${last:-none}"
  tr '\r' '\n' < "$W/$r.log" | grep -v '^\s*$' | grep -i "error\|Traceback" | head -3
  [ -n "$last" ] || continue
  echo "${last##*step-}" > "$W/$r.step"
  ( $EV --model "$last/model" --out "$W/ev_$r" --seeds 4 --families composition --n-composition $NC --think off \
      > "$W/ev_$r.log" 2>&1
    [ "${SWEEP_TE:-1}" = 1 ] && $EV --model "$last/model" --out "$W/ev_${r}_te" --seeds 2 $EVC > "$W/ev_${r}_te.log" 2>&1 ) &
done
wait
$PY - "$W" "$OUT" "${NAMES[@]}" <<'EOF'
import json, sys, pathlib
sys.path.insert(0, ".")
from bench.eval_summary import flat_summary
w, out, names = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
summary = lambda d: flat_summary(d / "results.json", digits=4)
rows, metrics = {}, {}
for n in ["start"] + names:
    a, b = summary(w / f"ev_{n}"), summary(w / f"ev_{n}_te")
    row = {**{k: v for k, v in b.items() if not k.startswith("composition")}, **a}
    row["composition_on_2seeds"] = b.get("composition_on")
    st = w / f"{n}.step"
    row["step"] = int(st.read_text()) if st.is_file() else 80
    rows[n] = row
    m = w / n / "logs" / "metrics.jsonl"
    if m.is_file():
        metrics[n] = [json.loads(l) for l in m.read_text().splitlines() if l.strip()]
curves = {}
for n, recs in metrics.items():
    r = [(x["step"], x["dit/reward"]) for x in recs if "dit/reward" in x]
    tie = [x.get("dit/zero_adv_frac") for x in recs if "dit/zero_adv_frac" in x]
    kl = [x.get("dit/kl") for x in recs if "dit/kl" in x]
    q = max(1, len(r) // 4)
    curves[n] = {"reward_quarters": [round(sum(v for _, v in r[i:i + q]) / len(r[i:i + q]), 3)
                                     for i in range(0, len(r), q)],
                 "tied_mean": round(sum(tie) / len(tie), 3) if tie else None,
                 "kl_max": round(max(kl), 5) if kl else None}
(out / "sweep.json").write_text(json.dumps({"evals": rows, "train": curves}, indent=1) + "\n")
(out / "metrics.json").write_text(json.dumps(metrics) + "\n")
keys = ["step", "composition_off", "composition/two_object_off", "composition/counting_off", "composition/colors_off",
        "composition/position_off", "composition/color_attr_off", "text_off", "text_on", "editing_off", "editing_on"]
print("run " + " ".join(k.replace("composition", "c").replace("_off", "") for k in keys) + " | reward quarters, tied")
for n, row in rows.items():
    c = curves.get(n, {})
    print(n, " ".join(str(row.get(k, "-")) for k in keys), "|", c.get("reward_quarters"), c.get("tied_mean"))
EOF
tar czf "$OUT/logs.tgz" -C "$W" $(cd "$W" && ls *.log) 2>/dev/null
echo "done at +$(( $(date +%s) - T0 ))s"
