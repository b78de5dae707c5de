#!/usr/bin/env bash
# One prepared pass over everything that needs a GPU (a benchmark script, not a test), sized for ~9 minutes on one
# H100/H200. Each part has its own time limit, writes its own log, and the results are re-packed after each part,
# so a part that fails or runs out of time does not lose the others.
#
#   bash bench/gpu_session.sh OUTDIR                   # on the GPU machine, from the repository root
#   PARTS=nano_b1,nano_b16 BUDGET_S=300 bash bench/gpu_session.sh OUTDIR   # some parts only; time budget
#
# Wheels that the machine lacks can be put in .whl/ (installed to /tmp/site, first on PYTHONPATH).
# Parts: (1) SepGRPO on CUDA under torchrun, NCCL, DDP and FSDP2 (1 process: one GPU is lent; the collectives,
# wrappers and checkpoints are those of N processes); (2) pipeline timings of the shipped nano model, batch 1 and 16;
# (3) the full geometry with random weights (Qwen3-VL-8B-shaped MLLM + 3.98B DiT + FLUX-shaped VAE, bf16, 1024 px,
# 50 steps): batch 1, batch 1 with the DiT blocks compiled, batch 4, batch 1 with int8 weights (needs optimum-quanto),
# batch 1 with model CPU offload; the nano server's throughput with and without request batching (needs fastapi,
# uvicorn, httpx, python-multipart: `bash bench/fetch_gpu_wheels.sh`, then run with carry [".whl"]); (4) the
# from-scratch nano recipe on CUDA while time lasts (how far it gets, stage by stage).
set -u
OUT=${1:?usage: bash bench/gpu_session.sh OUTDIR}
W=$OUT/work
mkdir -p "$W"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
. bench/gpu_env.sh
gpu_wheels "$W/pip.log"
T0=$(date +%s)
pack() { tar czf "$OUT/results.tgz" -C "$OUT" work 2>/dev/null; }
part() {  # part NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  echo "== $name (limit ${limit}s, at +$((t - T0))s)"
  timeout -k 10 "$limit" "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $(( $(date +%s) - t ))s"; tr '\r' '\n' < "$W/$name.log" | grep -v '^\s*$' | tail -n 4
  pack
}
gpu_env "$W/env.log"
PARTS=${PARTS:-all}
want() { [ "$PARTS" = all ] || [[ ",$PARTS," == *",$1,"* ]]; }
RUN="python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m thinkgen.rl.sepgrpo"
SG="--config configs/sepgrpo_nano.yaml --model_dir=thinkgen/assets/nano --device=cuda --mllm.steps=3 --dit.steps=3
    --nano_eval_size=8 --eval_seeds=1 --save_every=2 --progress=false"
want sepgrpo_ddp && part sepgrpo_ddp 120 $RUN $SG --parallel=ddp --output_dir=$W/sg_ddp
want sepgrpo_ddp_resume && part sepgrpo_ddp_resume 90 $RUN $SG --parallel=ddp --output_dir=$W/sg_ddp --dit.steps=5 \
  --allow_config_change=[dit.steps]
want sepgrpo_fsdp2 && part sepgrpo_fsdp2 120 $RUN $SG --parallel=fsdp2 --output_dir=$W/sg_fsdp2
rm -rf "$W"/sg_*/final "$W"/sg_*/checkpoints; pack
want nano_b1 && part nano_b1 60 python3 bench/bench_pipeline.py --device cuda --batch 1 --out "$W" --tag nano-cuda-b1
want nano_b16 && part nano_b16 60 python3 bench/bench_pipeline.py --device cuda --batch 16 --out "$W" --tag nano-cuda-b16
want full_b1 && part full_b1 150 python3 bench/bench_pipeline.py --random-weights full --device cuda --dtype bfloat16 --batch 1 \
  --iters 3 --out "$W" --tag full-random-cuda-b1
want full_b1_compile && part full_b1_compile 180 python3 bench/bench_pipeline.py --random-weights full --device cuda \
  --dtype bfloat16 --batch 1 --iters 3 --compile --out "$W" --tag full-random-cuda-b1-compile
want full_b4 && part full_b4 150 python3 bench/bench_pipeline.py --random-weights full --device cuda --dtype bfloat16 --batch 4 \
  --iters 1 --out "$W" --tag full-random-cuda-b4
want full_b1_int8 && part full_b1_int8 150 python3 bench/bench_pipeline.py --random-weights full --device cuda --dtype bfloat16 \
  --batch 1 --iters 3 --quantize int8 --out "$W" --tag full-random-cuda-b1-int8
want server_nano && part server_nano 90 python3 bench/bench_server.py --device cuda --clients 16 --requests 4 \
  --max-batch-images 1 16 --out "$W/server_nano_cuda.json"
want full_offload && part full_offload 120 python3 bench/bench_pipeline.py --random-weights full --device cuda --dtype bfloat16 --batch 1 \
  --cpu-offload --out "$W" --tag full-random-cuda-offload-b1
LEFT=$(( ${BUDGET_S:-540} - ($(date +%s) - T0) - 15 ))
if [ "$LEFT" -gt 60 ]; then   # how far the from-scratch nano recipe gets on CUDA in the time left (stage times)
  want train_nano_cuda && part train_nano_cuda "$LEFT" python3 -m thinkgen.cli train nano --preset full --device cuda --jobs 2 --threads 6 \
    --skip-eval --out "$W/nano"
  (cd "$W/nano" 2>/dev/null && find . -name "*.json" -size -200k | grep -v "/data/" | tar czf "$OUT/nano_train_meta.tgz" -T - )
  rm -rf "$W/nano"; pack
fi
echo "total $(( $(date +%s) - T0 ))s"
