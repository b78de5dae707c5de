# Sourced by the GPU benchmark scripts (bench/gpu_session.sh, bench/proof4_gpu_sweep.sh), from the repository root.
#   gpu_wheels LOG    install the wheels in .whl/ (what the machine lacks) into /tmp/site, first on PYTHONPATH;
#                     the repository itself is always on PYTHONPATH; returns 1 when the install fails
#   gpu_env FILE      record the GPU, driver, torch / transformers / diffusers versions and the date in FILE
gpu_wheels() {
  export PYTHONPATH=$PWD
  compgen -G ".whl/*.whl" > /dev/null || return 0
  export PYTHONPATH=/tmp/site:$PWD
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$1" 2>&1 || { echo "wheel install failed"; cat "$1"; return 1; }
}
gpu_env() {
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, transformers, diffusers; print(torch.__version__, torch.version.cuda, \
transformers.__version__, diffusers.__version__)"
    date -u; } > "$1" 2>&1
  cat "$1"
}
