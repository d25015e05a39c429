#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored) for benchmarks/gpu_check.sh. A lent GPU machine has torch, transformers,
# accelerate and scipy but no diffusers, no network, and not the ../shared beside the checkout, so it gets
# the diffusers wheel of the version installed here and a copy of the SD 1.5 + TAESD configs. Never commit .gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
configs="${SD_STYLES_CONFIGS:-../shared/fixtures/configs}"
[ -d "$configs/stable-diffusion-v1-5" ] || { echo "no $configs/stable-diffusion-v1-5 (../shared missing?)" >&2; exit 2; }
rm -rf .gpu
mkdir -p .gpu/whl .gpu/configs
version="$(python -c 'import diffusers; print(diffusers.__version__)')"
python -m pip download --quiet --no-deps --only-binary=:all: -d .gpu/whl "diffusers==$version"
cp -r "$configs/stable-diffusion-v1-5" "$configs/taesd" .gpu/configs/
du -sh .gpu >&2
