"""Memory of the loss decode's backward through an SDXL-sized VAE, measured on the CPU at a few sizes.

    python benchmarks/bench_sdxl_vae_memory.py                          # 128, 256, 384 px; fp32 + bf16
    python benchmarks/bench_sdxl_vae_memory.py --sizes 128 256 --dtypes bf16 --modes plain checkpoint

The VAE is `AutoencoderKL.from_config` of ../shared/fixtures/configs/stable-diffusion-xl-base-1.0/vae
(random weights: memory does not depend on the values). One guidance gradient is taken exactly as
`sd_styles.guidance` takes it: images = `sd_styles.decoders.vae_decoder(vae, checkpoint)(latents)`,
loss = mean, `torch.autograd.grad(loss, latents)`. Every configuration runs in its own process.

Two numbers per run, both excluding the weights (allocated before the measurement starts):
- `peak`: the largest sum of live tensor bytes during forward + backward, from the allocation and free
  events torch's profiler records with `profile_memory=True` (the CPU analogue of CUDA's
  `max_memory_allocated` minus what was allocated before);
- `rss`: peak resident memory (`ru_maxrss`) minus the resident memory just before, with glibc's mmap
  threshold fixed at 64 KiB so large tensors go back to the system when freed (an upper bound).
Modes: `plain` (no checkpointing), `checkpoint` (diffusers' `vae.enable_gradient_checkpointing()`:
each decoder up-block is recomputed in the backward), `tiled` (`vae.enable_tiling()` with tiles of half
the image side, no checkpointing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VAE_CONFIG = ROOT.parent / "shared" / "fixtures" / "configs" / "stable-diffusion-xl-base-1.0" / "vae"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_run(size: int, dtype: str, mode: str) -> dict:
    """Build the VAE, take one guidance gradient at size x size, return the measurements."""
    from diffusers import AutoencoderKL
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(ROOT))
    from sd_styles.decoders import vae_decoder
    from sd_styles.memory import live_tensor_peak

    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(VAE_CONFIG)).to(DTYPES[dtype]).eval()
    vae.requires_grad_(False)
    if mode == "tiled":
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = size // 2, size // 16
    decode = vae_decoder(vae, checkpoint=mode == "checkpoint")
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
    before = rss_bytes()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        grad, = torch.autograd.grad(decode(latents).mean(), latents)
    seconds = time.perf_counter() - start
    assert torch.isfinite(grad).all()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "dtype": dtype, "mode": mode, "peak_bytes": live_tensor_peak(prof),
            "rss_bytes": max(0, peak_rss - before), "seconds": round(seconds, 2),
            "weights_bytes": sum(p.numel() * p.element_size() for p in vae.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 384])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--modes", nargs="+", default=["plain", "checkpoint", "tiled"],
                   choices=["plain", "checkpoint", "tiled"])
    p.add_argument("--out", default=None, help="also write the rows as JSON lines here")
    p.add_argument("--one", nargs=3, metavar=("SIZE", "DTYPE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_run(int(args.one[0]), args.one[1], args.one[2])))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    rows = []
    for dtype in args.dtypes:
        for size in args.sizes:
            for mode in args.modes:
                out = subprocess.run([sys.executable, __file__, "--one", str(size), dtype, mode], env=env,
                                     capture_output=True, text=True, check=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                rows.append(row)
                print(f"{dtype:5s} {size:5d} {mode:10s} peak {row['peak_bytes'] / 2**30:7.3f} GiB  "
                      f"rss {row['rss_bytes'] / 2**30:7.3f} GiB  {row['seconds']:7.1f} s", flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
