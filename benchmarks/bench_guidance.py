"""Guided vs plain sampling time on an SD 1.5-sized model with random weights (no download).

    python benchmarks/bench_guidance.py                      # 128x128, 10 steps, cfg 7.5, batch 1, CPU
    python benchmarks/bench_guidance.py --repeats 2 --steps 10
    python benchmarks/bench_guidance.py --memory             # + VAE backward memory at 512x512 (see below)
    python benchmarks/bench_guidance.py --repeats 0 --compile   # per-step costs, eager and compiled loss decodes

UNet, VAE and text encoder are built with `from_config` from the SD 1.5 configs in
../shared/fixtures/configs (random init), TAESD from configs/taesd and saved to a temporary folder,
which is passed as `--loss-decoder PATH` (the code path of `tiny` after its download). Every
configuration renders the same recipe through `sd_styles.rendering`; rounds are interleaved so a busy
machine slows all of them alike, and the median of the rounds is reported, as wall time and as
process CPU time (the steadier of the two on a shared machine).

`--memory`: with CUDA, the peak `torch.cuda.max_memory_allocated` of one guided step (UNet fp16
forward + VAE decode forward/backward at 512x512) with and without the decoder's gradient
checkpointing. Without CUDA, an estimate from the bytes autograd saves for the backward
(`saved_tensors_hooks`), counted in bf16 (2 bytes per value, as fp16).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; SD_STYLES_CONFIGS points elsewhere (a device run carries a copy: gpu_check.sh)
CONFIGS = Path(os.environ.get("SD_STYLES_CONFIGS") or ROOT.parent / "shared" / "fixtures" / "configs")
CASES = [("plain", None, 1), ("vae every step", "vae", 1), ("vae every 5th step", "vae", 5),
         ("tiny every step", "tiny", 1), ("linear every step", "linear", 1)]
TARGETS = {"tiny every step": 1.15, "vae every 5th step": 1.5}   # issue 9 (earlier: 1.35 and 1.6)


def build_model(configs: Path, device: str, dtype: torch.dtype):
    """A StyleModel around an SD 1.5-shaped pipeline with random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sd_styles.models import StyleModel

    sd = configs / "stable-diffusion-v1-5"
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd / "unet")),
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(sd / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(sd / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(sd / "tokenizer"),
        scheduler=PNDMScheduler.from_config(PNDMScheduler.load_config(sd / "scheduler")),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    dev = torch.device(device)
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.to(dev, dtype).eval()
    pipe.set_progress_bar_config(disable=True)
    return StyleModel(pipe=pipe, source="bench/sd15-random", revision=None, device=dev, dtype=dtype, vae_dtype=dtype)


def save_random_taesd(configs: Path, folder: Path) -> Path:
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny.from_config(AutoencoderTiny.load_config(configs / "taesd")).save_pretrained(folder)
    return folder


def time_render(model, recipe) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one render."""
    from sd_styles.rendering import render

    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    render(model, [recipe], progress=False)
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_speed(args) -> None:
    from sd_styles.recipe import Guidance, LossTerm
    from sd_styles.rendering import make_recipe

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    t0 = time.perf_counter()
    model = build_model(CONFIGS, args.device, dtype)
    tmp = tempfile.TemporaryDirectory(prefix="bench-taesd-")   # removed when this function returns
    taesd = save_random_taesd(CONFIGS, Path(tmp.name) / "taesd")
    print(f"# built SD1.5-size random model in {time.perf_counter() - t0:.1f}s; "
          f"torch threads {torch.get_num_threads()}",
          file=sys.stderr)
    recipes = {}
    for label, decoder, every in CASES:
        g = None if decoder is None else Guidance(
            losses=(LossTerm("blue", 200.0),), every=every, decoder=str(taesd) if decoder == "tiny" else decoder)
        recipes[label] = make_recipe(model, "a mouse wearing a top hat", seed=0, steps=args.steps, cfg=args.cfg,
                                     width=args.size, height=args.size, scheduler=args.scheduler, guidance=g)
    for recipe in recipes.values():  # warm-up: first calls allocate, load TAESD once, build oneDNN kernels
        model_step_warmup(model, recipe)
    if args.components:
        bench_components(args, model, taesd)
    if args.repeats < 1:
        return
    walls: dict[str, list[float]] = {k: [] for k in recipes}
    cpus: dict[str, list[float]] = {k: [] for k in recipes}
    for r in range(args.repeats):
        for label, recipe in recipes.items():
            w, c = time_render(model, recipe)
            walls[label].append(w)
            cpus[label].append(c)
            print(f"# round {r + 1}: {label:20s} wall {w:7.2f}s  cpu {c:7.2f}s", file=sys.stderr, flush=True)
    report(args, walls, cpus)


def bench_components(args, model, taesd: Path) -> None:
    """Per-step costs, min of `--component-repeats` interleaved runs (the min resists a busy machine).

    Predicted ratio = (steps * unet + final decode + guided steps * gradient) / (steps * unet + final decode).
    """
    from sd_styles.conditioning import Conditioning
    from sd_styles.decoders import make_decoder
    from sd_styles.guidance import loss_gradient
    from sd_styles.losses import blue_loss
    from sd_styles.sampling import decode, make_denoiser
    from sd_styles.schedulers import make_scheduler

    pipe, dev = model.pipe, model.device
    scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    scheduler.set_timesteps(args.steps, device=dev)
    side = args.size // pipe.vae_scale_factor
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 4, side, side, generator=gen) * scheduler.init_noise_sigma).to(dev, model.dtype)
    embeds = torch.randn(2, 77, pipe.text_encoder.config.hidden_size, generator=gen).to(dev, model.dtype)
    denoise = make_denoiser(pipe.unet, scheduler, [Conditioning(embeds)], args.cfg, True)
    t = scheduler.timesteps[1]
    eps = denoise(x, 1, t)[1]
    jobs = {"unet (cfg, batch 1)": lambda: denoise(x, 1, t)}
    jobs["final vae decode"] = lambda: decode(pipe.vae, x)

    def gradient(d):
        return lambda: loss_gradient(scheduler, x, eps, 1, t, d, [(blue_loss, 200.0)])

    for name in ("vae", str(taesd), "linear"):
        label = "tiny" if name == str(taesd) else name
        dec = make_decoder(model, name)
        jobs[f"gradient via {label}"] = gradient(dec)
        if args.compile and label != "linear":   # what optimize(model, compile=True) makes of the loss decode
            compiled = torch.compile(dec)
            start = time.perf_counter()
            gradient(compiled)()
            print(f"# compiling the {label} loss decode (forward + backward): {time.perf_counter() - start:.1f}s "
                  "(first call)", flush=True)
            jobs[f"gradient via {label}, compiled"] = gradient(compiled)
    best = {k: float("inf") for k in jobs}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(args.component_repeats):
        for k, job in jobs.items():
            sync()
            start = time.perf_counter()
            with torch.no_grad():
                job()
            sync()
            best[k] = min(best[k], time.perf_counter() - start)
    unet, final = best["unet (cfg, batch 1)"], best["final vae decode"]
    plain = args.steps * unet + final
    print(f"per-step costs (min of {args.component_repeats}), {args.size}x{args.size}:")
    for k, v in best.items():
        print(f"  {k:32s} {v:7.3f}s  ({v / unet:5.2f}x a UNet step)")
    print("predicted ratios from the costs above:")
    for label, decoder, every in CASES[1:]:
        guided = len(range(0, args.steps, every))
        for suffix in ("", ", compiled"):
            cost = best.get(f"gradient via {decoder}{suffix}")
            if cost is not None:
                print(f"  {label + suffix:32s} {(plain + guided * cost) / plain:5.2f}")


def model_step_warmup(model, recipe) -> None:
    """One-step render of the same configuration, untimed."""
    from dataclasses import replace

    from sd_styles.rendering import render

    render(model, [replace(recipe, steps=1)], progress=False)


def report(args, walls, cpus) -> None:
    base_w, base_c = statistics.median(walls["plain"]), statistics.median(cpus["plain"])
    print(f"SD1.5-size random weights, {args.size}x{args.size}, {args.steps} steps, cfg {args.cfg}, batch 1, "
          f"{args.scheduler}, {args.device} {args.dtype}, loss blue:200, median of {args.repeats}")
    print(f"{'configuration':22s} {'wall s':>8s} {'ratio':>6s} {'cpu s':>8s} {'ratio':>6s}  target")
    for label in walls:
        w, c = statistics.median(walls[label]), statistics.median(cpus[label])
        target = TARGETS.get(label)
        verdict = "" if target is None else f"<= {target}x: {'met' if w / base_w <= target else 'MISSED'} (wall)"
        print(f"{label:22s} {w:8.2f} {w / base_w:6.2f} {c:8.2f} {c / base_c:6.2f}  {verdict}")


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward while `fn` runs (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def bench_memory(args) -> None:
    """Peak memory of the VAE decode backward at `--memory-size`, with and without gradient checkpointing."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    sd = CONFIGS / "stable-diffusion-v1-5"
    side = args.memory_size // 8
    if torch.cuda.is_available():
        dev, dt = torch.device("cuda"), torch.float16
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd / "unet")).to(dev, dt).eval()
        for ckpt in (False, True):
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(sd / "vae")).to(dev, dt).eval()
            if ckpt:
                vae.enable_gradient_checkpointing()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            z = torch.randn(2, 4, side, side, device=dev, dtype=dt)
            with torch.no_grad():
                unet(z, 500, encoder_hidden_states=torch.randn(2, 77, 768, device=dev, dtype=dt))
            x = z[:1].detach().requires_grad_(True)
            torch.autograd.grad(vae.decode(x / 0.18215).sample.float().mean(), x)
            torch.cuda.synchronize()
            print(f"cuda fp16 {args.memory_size}x{args.memory_size}: UNet + VAE backward, checkpointing {ckpt}: "
                  f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
            del vae
        return
    print(f"no CUDA GPU: estimating from saved activations (bf16, {args.memory_size}x{args.memory_size})")
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(sd / "vae")).to(torch.bfloat16).eval()
    x = torch.randn(1, 4, side, side, dtype=torch.bfloat16, requires_grad=True)
    full = saved_bytes(lambda: vae.decode(x / 0.18215).sample)
    vae.enable_gradient_checkpointing()
    outside = saved_bytes(lambda: vae.decode(x / 0.18215).sample)
    vae.disable_gradient_checkpointing()
    # with checkpointing the backward recomputes one block at a time: peak ~ outside + the largest block
    dec, h = vae.decoder, vae.post_quant_conv(x / 0.18215)
    with torch.no_grad():
        h = dec.conv_in(h)
    blocks = [dec.mid_block, *dec.up_blocks]
    largest = 0
    for block in blocks:
        inp = h.detach().requires_grad_(True)
        largest = max(largest, saved_bytes(lambda: block(inp, None)))
        with torch.no_grad():
            h = block(inp, None)
    gib = 2**30
    print(f"saved for backward without checkpointing: {full / gib:.2f} GiB")
    print(f"with checkpointing: {outside / gib:.2f} GiB kept + {largest / gib:.2f} GiB largest block recomputed "
          f"= ~{(outside + largest) / gib:.2f} GiB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--scheduler", default="lms")
    p.add_argument("--repeats", type=int, default=1,
                   help="interleaved end-to-end rounds; the median is reported (0: components only)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--components", action=argparse.BooleanOptionalAction, default=True,
                   help="also time one UNet step and one guidance gradient per decoder (default on)")
    p.add_argument("--component-repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true",
                   help="components: also the torch.compile'd loss decodes (compile time and per-gradient cost)")
    p.add_argument("--memory", action="store_true", help="also measure / estimate the VAE backward's memory")
    p.add_argument("--memory-only", action="store_true", help="only the memory measurement")
    p.add_argument("--memory-size", type=int, default=512)
    args = p.parse_args(argv)
    if not CONFIGS.is_dir():
        print(f"configs not found at {CONFIGS}", file=sys.stderr)
        return 2
    if not args.memory_only:
        bench_speed(args)
    if args.memory or args.memory_only:
        bench_memory(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
