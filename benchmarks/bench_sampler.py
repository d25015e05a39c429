"""Our hand-written loop vs diffusers' StableDiffusionPipeline, and per-cell vs fused batches, side by side.

    python benchmarks/bench_sampler.py                  # 128x128, 10 steps, cfg 7.5, lms, CPU, 2 rounds
    python benchmarks/bench_sampler.py --batch 4 --repeats 3

Same SD 1.5-sized random-weight model as bench_guidance.py (configs from ../shared/fixtures). Cases:
diffusers and ours on one cell; then a batch of `--batch` seeds through diffusers (one stacked UNet
call per step), ours by default (one UNet call per cell: bit-identical to rendering each cell alone)
and ours with `fused=True` (one stacked call, like diffusers). Rounds are interleaved; medians reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from bench_guidance import CONFIGS, build_model

PROMPT = "a mouse wearing a top hat"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cases(model, args) -> dict:
    """label -> zero-argument callable rendering that case once."""
    from sd_styles.rendering import make_recipe, render
    from sd_styles.schedulers import make_scheduler

    pipe = model.pipe
    base_config = pipe.scheduler.config

    def diffusers(seeds):
        pipe.scheduler = make_scheduler(args.scheduler, base_config)
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return lambda: pipe([PROMPT] * len(seeds), num_inference_steps=args.steps, guidance_scale=args.cfg,
                            height=args.size, width=args.size, generator=gens)

    def ours(seeds, fused=False):
        recipes = [make_recipe(model, PROMPT, seed=s, steps=args.steps, cfg=args.cfg, width=args.size,
                               height=args.size, scheduler=args.scheduler) for s in seeds]
        return lambda: render(model, recipes, fused=fused, progress=False)

    batch = list(range(args.batch))
    return {"diffusers, 1 cell": diffusers([0]), "ours, 1 cell": ours([0]),
            f"diffusers, batch {args.batch}": diffusers(batch), f"ours, batch {args.batch}": ours(batch),
            f"ours fused, batch {args.batch}": ours(batch, fused=True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--scheduler", default="lms")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    model = build_model(CONFIGS, args.device, torch.float32)
    runs = cases(model, args)
    for fn in runs.values():  # warm-up: oneDNN kernels, allocator
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeats):
        for label, fn in runs.items():
            times[label].append(timed(fn))
            print(f"# round {r + 1}: {label:24s} {times[label][-1]:7.2f}s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    b = args.batch
    print(f"{args.size}x{args.size}, {args.steps} steps, cfg {args.cfg}, {args.scheduler}, {args.device}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}")
    for label, t in med.items():
        print(f"  {label:24s} {t:7.2f}s")
    print(f"ours / diffusers, 1 cell:            {med['ours, 1 cell'] / med['diffusers, 1 cell']:.3f}")
    print(f"ours / diffusers, batch {b}:           {med[f'ours, batch {b}'] / med[f'diffusers, batch {b}']:.3f}")
    print(f"ours fused / diffusers, batch {b}:     "
          f"{med[f'ours fused, batch {b}'] / med[f'diffusers, batch {b}']:.3f}")
    print(f"per-cell / fused, batch {b}:           {med[f'ours, batch {b}'] / med[f'ours fused, batch {b}']:.3f}")


if __name__ == "__main__":
    main()
