#!/usr/bin/env bash
# Issue 9's GPU figures in one device call (at most 9 minutes: each step has its own limit), most wanted first; each step's output
# goes to $OUT as it runs, so a call cut short still returns what finished. Prepare once, here:
#     bash benchmarks/gpu_prepare.sh
# then with the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=580)
# SMOKE=1 runs every step on this machine's CPU at toy sizes (checks the script, measures nothing).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
if [ "${SMOKE:-0}" = 1 ]; then
    gpu=(); call_shape=(--size 64 --steps 2 --cells 3); size=(--size 64 --steps 2 --cells 2)
    guidance=(--size 64 --steps 2); mem=(--size 64 --cases plain tiny)
else
    gpu=(--gpu); call_shape=(--device cuda --dtype fp16 --size 512 --steps 20 --cells 5); size=()
    guidance=(--device cuda --dtype fp16 --size 512 --steps 50); mem=(--size 512)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
    export SD_STYLES_CONFIGS="$PWD/.gpu/configs"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
cd benchmarks
step() {   # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.txt and the call's tail
    local name=$1 limit=$2; shift 2
    echo "== $name: $* (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    grep -v '^#' "$OUT/$name.txt" | tail -n 25
    echo "== $name: exit $rc after $((SECONDS - start))s"
}
{
    date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
    python3 -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"cudnn", torch.backends.cudnn.version(), "diffusers", diffusers.__version__, "transformers", transformers.__version__)'
} 2>&1 | tee "$OUT/env.txt"
step call_shape 50 python3 bench_call_shape.py "${call_shape[@]}"
step sampler 150 python3 bench_sampler.py "${gpu[@]}" "${size[@]}" --repeats 2 --components
step guidance 80 python3 bench_guidance.py "${guidance[@]}" --repeats 2
step memory 90 python3 bench_memory.py "${gpu[@]}" "${mem[@]}"
# compiling the SD 1.5 UNet takes minutes on this project's 2-core CPU: not part of a smoke run
[ "${SMOKE:-0}" = 1 ] || step compile 120 python3 bench_sampler.py "${gpu[@]}" --compile --repeats 0
step compile_decode 80 python3 bench_guidance.py "${guidance[@]}" --repeats 0 --compile
