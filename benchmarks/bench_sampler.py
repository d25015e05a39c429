"""Our loop vs diffusers' pipeline; stacked batches vs one cell per call; a plain + guided grid; peak memory.

    python benchmarks/bench_sampler.py                      # CPU: 128x128, 3 steps, cfg 7.5, lms, 2 rounds
    python benchmarks/bench_sampler.py --gpu                # CUDA: 512x512, fp16, 50 steps (it/s, % of peak)
    python benchmarks/bench_sampler.py --compile            # + torch.compile of the UNet (compile time, gain)
    python benchmarks/bench_sampler.py --gpu --compile --repeats 0   # the compile measurement alone
    python benchmarks/bench_sampler.py --components --repeats 0      # what one call costs, by part

SD 1.5-sized UNet / VAE / text encoder with random weights from ../shared/fixtures/configs (see
bench_guidance.py), TAESD random from configs/taesd for the guided grid. Cases, interleaved round by
round (a busy machine slows all alike), median reported:
  diffusers, 1 cell / ours, 1 cell;
  diffusers, N cells in one pipeline call (its own batching) / ours stacked (default batch 8: calls of
  8 + 2 for N = 10) / ours stacked in one call of N (diffusers' call shape) / ours exact (one cell per call);
  grid: N/2 styles plain + guided with the tiny decoder every step (stacked; the loss decode is per cell).
Peak memory per case: RSS above the pre-call level, polled every 5 ms (CPU), or
torch.cuda.max_memory_allocated (GPU). A CFG UNet step of SD 1.5 at 64x64 latents is 1.61 TFLOP per
cell: the GPU mode reports achieved TFLOP/s against `--peak-tflops` (H100 SXM dense fp16: 989).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from bench_guidance import CONFIGS, build_model, save_random_taesd

PROMPT = "a mouse wearing a top hat"
UNET_CFG_TFLOP = 1.61   # one CFG UNet step (2 samples) of SD 1.5 at 64x64 latents, per cell


class PeakMemory:
    """Peak memory while a block runs: CUDA allocator peak, or host RSS polled in a thread."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        proc, self.stop = psutil.Process(), threading.Event()
        base = proc.memory_info().rss

        def poll():
            while not self.stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss - base)
                time.sleep(0.005)

        self.thread = threading.Thread(target=poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.stop.set()
            self.thread.join()


def cases(model, args, taesd: Path) -> dict:
    """label -> (zero-argument callable rendering that case once, cells, UNet steps per cell)."""
    from sd_styles.recipe import Guidance, LossTerm
    from sd_styles.rendering import make_recipe, render
    from sd_styles.schedulers import make_scheduler

    pipe, base = model.pipe, model.pipe.scheduler.config
    n = args.cells

    def diffusers(seeds):
        def call():
            pipe.scheduler = make_scheduler(args.scheduler, base)
            gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            return pipe([PROMPT] * len(seeds), num_inference_steps=args.steps, guidance_scale=args.cfg,
                        height=args.size, width=args.size, generator=gens)
        return call

    def recipes(seeds, guidance=None):
        return [make_recipe(model, PROMPT, seed=s, steps=args.steps, cfg=args.cfg, width=args.size,
                            height=args.size, scheduler=args.scheduler, guidance=guidance) for s in seeds]

    def ours(rs, mode="stacked", batch_size=8):
        return lambda: render(model, rs, mode=mode, batch_size=batch_size, progress=False)

    grid = recipes(range(n // 2)) + recipes(range(n // 2), Guidance((LossTerm("blue", 200.0),), decoder=str(taesd)))
    return {
        "diffusers, 1 cell": (diffusers([0]), 1), "ours, 1 cell": (ours(recipes([0])), 1),
        f"diffusers, {n} cells": (diffusers(range(n)), n), f"ours stacked, {n} cells": (ours(recipes(range(n))), n),
        f"ours stacked, {n} cells, 1 call": (ours(recipes(range(n)), batch_size=n), n),   # diffusers' shape
        f"ours exact, {n} cells": (ours(recipes(range(n)), "exact"), n),
        f"grid {n // 2} plain + {n // 2} guided tiny": (ours(grid), n),
    }


def timed(fn, device: torch.device) -> tuple[float, int]:
    """(wall seconds, peak bytes) of one call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with PeakMemory(device) as mem:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - start
    return wall, mem.peak


def report(args, med: dict, peaks: dict, rounds: int) -> None:
    n = args.cells
    print(f"{args.size}x{args.size}, {args.steps} steps, cfg {args.cfg}, {args.scheduler}, {args.device} "
          f"{args.dtype}, torch threads {torch.get_num_threads()}, median of {rounds} interleaved rounds")
    for label, t in med.items():
        extra = ""
        if args.device == "cuda":
            cells = args.cells if "1 cell" not in label else 1
            tflops = UNET_CFG_TFLOP * args.steps * cells / t
            extra = f"  {args.steps * cells / t:6.1f} cell-it/s  {tflops:6.1f} TFLOP/s ({tflops / args.peak_tflops:.0%})"
        print(f"  {label:34s} {t:8.2f}s  peak {peaks[label] / 2**20:8.0f} MiB{extra}")
    ratios = [("ours / diffusers, 1 cell", "ours, 1 cell", "diffusers, 1 cell", " (target <= 1.00)"),
              (f"ours stacked / diffusers, {n} cells", f"ours stacked, {n} cells", f"diffusers, {n} cells",
               " (target <= 1.00)"),
              (f"ours in 1 call / diffusers, {n} cells", f"ours stacked, {n} cells, 1 call", f"diffusers, {n} cells",
               ""),
              (f"exact (per cell) / stacked, {n} cells", f"ours exact, {n} cells", f"ours stacked, {n} cells", ""),
              (f"exact (per cell) / diffusers, {n} cells", f"ours exact, {n} cells", f"diffusers, {n} cells", "")]
    for text, a, b, target in ratios:
        if a in med and b in med:   # --cases may leave one out
            print(f"{text + ':':42s} {med[a] / med[b]:.3f}{target}")


def bench_compile(model, args) -> None:
    """torch.compile of the UNet: first call (compile + run) and steady state, vs eager, stacked."""
    from sd_styles.rendering import make_recipe, render
    from sd_styles.speed import optimize

    rs = [make_recipe(model, PROMPT, seed=s, steps=args.steps, cfg=args.cfg, width=args.size, height=args.size,
                      scheduler=args.scheduler) for s in range(args.cells)]
    eager = statistics.median(timed(lambda: render(model, rs, progress=False), model.device)[0] for _ in range(2))
    optimize(model, compile=True)
    first = timed(lambda: render(model, rs, progress=False), model.device)[0]
    steady = statistics.median(timed(lambda: render(model, rs, progress=False), model.device)[0] for _ in range(2))
    print(f"compile: eager {eager:.2f}s, first compiled call {first:.2f}s (compile ~{first - steady:.1f}s), "
          f"compiled {steady:.2f}s: gain {eager / steady:.3f}x")


def bench_components(model, args) -> None:
    """A call's parts: UNet step (CFG) at 1, 2 and N cells; the final decode of N in one call or one by one; text."""
    from sd_styles.conditioning import encode_conditioning
    from sd_styles.sampling import decode

    pipe, n, f, dev = model.pipe, args.cells, model.pipe.vae_scale_factor, model.device
    h = args.size // f

    def best(fn) -> float:   # min of 3 after a warm-up
        fn()
        return min(timed(fn, dev)[0] for _ in range(3))

    def text(batched: bool):
        if batched:   # what diffusers does for a list of N prompts: N negatives and N prompts in one call each
            ids = pipe.tokenizer([PROMPT] * n, padding="max_length", max_length=77, return_tensors="pt").input_ids
            return lambda: [pipe.text_encoder(ids.to(dev)) for _ in range(2)]
        return lambda: encode_conditioning(model, [PROMPT] * n, [""] * n, True, args.size, args.size)

    with torch.no_grad():
        for cells in sorted({1, 2, n}):
            x = torch.randn(2 * cells, 4, h, h, device=dev, dtype=model.dtype)
            e = torch.randn(2 * cells, 77, pipe.unet.config.cross_attention_dim, device=dev, dtype=model.dtype)
            t = best(lambda: pipe.unet(x, 999, encoder_hidden_states=e))
            print(f"UNet step (CFG), {cells:2d} cell(s) per call: {t:7.3f}s  ({t / cells:.3f}s per cell)")
        z = torch.randn(n, 4, h, h, device=dev, dtype=pipe.vae.dtype)
        ways = {"in one call": lambda: decode(pipe.vae, z), "one per call": lambda: decode(pipe.vae, z, chunk=1)}
        med, _ = interleaved(ways, 5, dev)
        print(f"final decode of {n} images (median of 5): in one call {med['in one call']:.3f}s, one per call "
              f"{med['one per call']:.3f}s ({med['one per call'] / med['in one call']:.3f}x)")
        batched, distinct = best(text(True)), best(text(False))
        print(f"text, {n} cells of one prompt + CFG: 2 calls of {n} texts {batched:.3f}s; "
              f"each distinct text once, alone {distinct:.3f}s")


def interleaved(runs: dict, rounds: int, device: torch.device, log: bool = False) -> tuple[dict, dict]:
    """Each zero-argument callable once untimed (kernels, allocator, loads), then `rounds` interleaved rounds
    (a busy moment slows all alike): (median seconds, peak bytes) per label."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    peaks: dict[str, int] = {k: 0 for k in runs}
    for r in range(rounds):
        for label, fn in runs.items():
            wall, peak = timed(fn, device)
            times[label].append(wall)
            peaks[label] = max(peaks[label], peak)
            if log:
                print(f"# round {r + 1}: {label:34s} {wall:8.2f}s", file=sys.stderr, flush=True)
    return {k: statistics.median(v) for k, v in times.items()}, peaks


def bench_cases(model, args) -> None:
    """Every case of `cases`, then the report of `--repeats` interleaved rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        taesd = save_random_taesd(CONFIGS, Path(tmp) / "taesd")
        runs = {k: fn for k, (fn, _) in cases(model, args, taesd).items()
                if not args.cases or any(part in k for part in args.cases)}
        med, peaks = interleaved(runs, args.repeats, model.device, log=True)
    report(args, med, peaks, args.repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="CUDA, fp16, 512x512, 50 steps")
    p.add_argument("--steps", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--cells", type=int, default=10)
    p.add_argument("--scheduler", default="lms")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds (0: skip the cases, e.g. with --compile)")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--components", action="store_true", help="time a call's parts (UNet step, decode, text)")
    p.add_argument("--cases", nargs="+", metavar="TEXT", help="only the cases whose label contains one of these")
    args = p.parse_args()
    args.device, args.dtype = ("cuda", "fp16") if args.gpu else ("cpu", "fp32")
    args.steps = args.steps or (50 if args.gpu else 3)
    args.size = args.size or (512 if args.gpu else 128)
    model = build_model(CONFIGS, args.device, torch.float16 if args.gpu else torch.float32)
    if args.repeats > 0:   # 0: only the compile measurement
        bench_cases(model, args)
    if args.components:
        bench_components(model, args)
    if args.compile:
        bench_compile(model, args)


if __name__ == "__main__":
    main()
