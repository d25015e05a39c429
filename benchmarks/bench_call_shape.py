"""Does a cell's output depend on its companions, its position in the call, or the run? Measured, not assumed.

    python benchmarks/bench_call_shape.py                        # CPU, fp32, 128x128, 3 steps
    python benchmarks/bench_call_shape.py --device cuda --dtype fp16 --size 512 --steps 20

The reproducibility contract (README "How exact is it") says: with the call shape fixed (cells per call,
the cell's position), a cell's pixels do not depend on which cells share its call, so `rerun` rebuilds the
shape with throw-away copies and gets the same bits on the same machine. `tests/test_batching.py` asserts
that on the CPU with the tiny model; this script measures it on an SD 1.5-sized random model on any device
(a GPU may pick other kernels per batch size, or run non-deterministic ones), printing for one cell's final
latents (`torch.equal`, and the largest difference otherwise):

  run to run        the same call twice (are the kernels deterministic?)
  companions        the cell at a fixed place with other companions
  rerun's padding   the cell alone, padded with copies of itself to the recorded shape
  position k        the cell at place k of the same call instead of place 0
  alone             the cell in a call of its own instead of a stacked one (pixels too, in 1/255)
"""

from __future__ import annotations

import argparse

import torch
from bench_guidance import CONFIGS, build_model

PROMPTS = ["a mouse wearing a top hat", "a lighthouse at dusk", "a bowl of ramen", "an owl in the snow",
           "a red bicycle", "a castle on a hill", "a cat astronaut", "a forest river"]


def final(model, cells, size: int | None = None, position: int = 0) -> tuple[torch.Tensor, list]:
    """Final latents (B, 4, h, w) on the CPU and the images of one call (or rerun's padded call)."""
    from sd_styles.rendering import render_batch, render_padded

    store = {}

    def keep(info):
        store["x"] = info["latents"].detach().float().cpu().clone()

    if size is None:
        images = [r.image for r in render_batch(model, cells, keep, progress=False)]
    else:
        images = [render_padded(model, cells[0], size, position, progress=False, callback=keep).image]
    return store["x"], images


def compare(label: str, a: torch.Tensor, b: torch.Tensor) -> None:
    # bit-for-bit, NaN equal to NaN: random fp16 weights may overflow, and torch.equal would call that a change
    same = torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
    finite = torch.isfinite(a) & torch.isfinite(b)
    detail = "" if same else (f"max |diff| {(a - b)[finite].abs().max().item():.3g} (latents of magnitude "
                              f"{a[finite].abs().max():.3g})")
    if not finite.all():
        detail += f"  [{(~finite).sum().item()} non-finite values]"
    print(f"  {label:26s} {'identical' if same else 'DIFFERENT'}  {detail}", flush=True)


def pixel_diff(a, b) -> int:
    import numpy as np

    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--cells", type=int, default=5, help="cells per call (at most 8)")
    args = p.parse_args()
    from sd_styles.rendering import make_recipe

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    model = build_model(CONFIGS, args.device, dtype)
    n = max(2, min(args.cells, len(PROMPTS) - 1))
    recipes = [make_recipe(model, text, seed=100 + k, steps=args.steps, width=args.size, height=args.size,
                           scheduler="lms") for k, text in enumerate(PROMPTS)]
    cell, first, second = recipes[0], recipes[1:n], recipes[n:] + recipes[1:]
    name = torch.cuda.get_device_name() if model.device.type == "cuda" else "cpu"
    print(f"{name}, {args.dtype}, {args.size}x{args.size}, {args.steps} steps, lms, calls of {n} cells; "
          f"torch {torch.__version__}, cudnn.deterministic={torch.backends.cudnn.deterministic}")
    base, base_images = final(model, [cell, *first])
    compare("run to run", base[0], final(model, [cell, *first])[0][0])
    compare("companions", base[0], final(model, [cell, *second[:n - 1]])[0][0])
    compare("rerun's padding", base[0], final(model, [cell], size=n, position=0)[0][0])
    for k in range(1, n):
        others = list(first)
        others.insert(k, cell)
        compare(f"position {k} of {n}", base[0], final(model, others)[0][k])
    alone, alone_images = final(model, [cell])
    compare("alone vs stacked", base[0], alone[0])
    print(f"  {'alone vs stacked, pixels':26s} {pixel_diff(base_images[0], alone_images[0])}/255", flush=True)


if __name__ == "__main__":
    main()
