"""Measured peak memory of whole renders vs `sd_styles.memory.estimate`: plain, stacked, and guided per decoder.

    python benchmarks/bench_memory.py                    # CPU, fp32, 512x512, 1 step, SD 1.5-sized random model
    python benchmarks/bench_memory.py --gpu              # CUDA, fp16 (torch.cuda.max_memory_allocated)
    python benchmarks/bench_memory.py --size 256 --cases plain vae

Each case renders one recipe through `sd_styles.rendering.render` (the real code path; guided cases guide
their one step, with the `blue` loss) in its own process, so one case's allocator state never hides
another's. The model is built and its weights allocated before the measurement starts, so both numbers
are activations only, which is what the estimate counts:
- CPU `peak`: the largest running sum of live tensor bytes during the render, from the allocation and
  free events of torch's profiler (`profile_memory=True`), the CPU analogue of CUDA's allocator peak;
- GPU `peak`: `torch.cuda.max_memory_allocated()` minus the bytes allocated before the render.
The estimate is `memory.estimate(model, recipes, batch_size)`: its largest phase (UNet call, final VAE
decode, one cell's loss decode and backward), compared with the measured peak as a ratio (> 1: the
estimate is generous). On the CPU the full VAE's backward runs without gradient checkpointing, as
`decoders.make_decoder` runs it there; on CUDA with it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_guidance import CONFIGS, build_model, save_random_taesd

PROMPT = "a mouse wearing a top hat"
CASES = {"plain": (None, 1), "plain, 4 cells stacked": (None, 4), "vae": ("vae", 1), "tiny": ("tiny", 1),
         "linear": ("linear", 1)}


def one_case(label: str, size: int, gpu: bool) -> dict:
    """Build the model, render the case once while measuring, return measured and estimated bytes."""
    from torch.profiler import ProfilerActivity, profile

    from sd_styles.memory import estimate, live_tensor_peak
    from sd_styles.recipe import Guidance, LossTerm
    from sd_styles.rendering import make_recipe, render

    decoder, cells = CASES[label]
    device, dtype = ("cuda", torch.float16) if gpu else ("cpu", torch.float32)
    model = build_model(CONFIGS, device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        taesd = save_random_taesd(CONFIGS, Path(tmp) / "taesd")
        guidance = None if decoder is None else Guidance(
            (LossTerm("blue", 200.0),), decoder=str(taesd) if decoder == "tiny" else decoder)
        recipes = [make_recipe(model, PROMPT, seed=s, steps=1, cfg=7.5, width=size, height=size, scheduler="lms",
                               guidance=guidance) for s in range(cells)]
        if decoder is not None:   # load TAESD / build the loss VAE copy outside the measurement
            from sd_styles.decoders import make_decoder

            make_decoder(model, guidance.decoder)
        est = estimate(model, recipes, batch_size=cells)
        start = time.perf_counter()
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            render(model, recipes, batch_size=cells, progress=False)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                render(model, recipes, batch_size=cells, progress=False)
            peak = live_tensor_peak(prof)
    return {"case": label, "size": size, "device": device, "peak_bytes": peak,
            "seconds": round(time.perf_counter() - start, 1), "estimate_bytes": est.peak,
            "estimate_unet": est.unet, "estimate_vae": est.vae, "estimate_guidance": est.guidance}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="CUDA, fp16")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--one", metavar="CASE", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_case(args.one, args.size, args.gpu)))
        return
    gib = 2**30
    print(f"{args.size}x{args.size}, 1 step, cfg 7.5, lms, {'cuda fp16' if args.gpu else 'cpu fp32'}; "
          "activation bytes (weights excluded)")
    for label in args.cases:
        cmd = [sys.executable, __file__, "--one", label, "--size", str(args.size)] + (["--gpu"] if args.gpu else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"  {label:24s} measured {row['peak_bytes'] / gib:6.2f} GiB  estimate {row['estimate_bytes'] / gib:6.2f} "
              f"GiB (UNet {row['estimate_unet'] / gib:.2f}, VAE {row['estimate_vae'] / gib:.2f}, loss decode "
              f"{row['estimate_guidance'] / gib:.2f})  estimate / measured {row['estimate_bytes'] / row['peak_bytes']:.2f}"
              f"  {row['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
