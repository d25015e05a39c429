"""Memory estimates for a render, and its refusal before it starts when the device cannot hold it.

An out-of-memory crash half-way through a grid wastes the work done so far and says nothing useful;
`check_fits` estimates the peak first and raises BadInput with the estimate and the ways out. The
estimate counts activations only (the weights are already loaded) from the model's own configs:

- UNet call (no grad): the skip connections every down block keeps for the up blocks, plus a few
  working tensors of the largest level, for 2n samples per call with CFG (n cells per call);
- final VAE decode (no grad): `VAE_LIVE` tensors of the decoder's largest activation, one image per call;
- guided step (one cell per decoder call, whatever the batching): the activations the decoder keeps
  for its backward (full VAE: the measured per-pixel peak of `decoder_memory`, dtype and gradient
  checkpointing as `decoders.make_decoder` runs it; TAESD: 64 channels per conv; linear: none).

Available memory: `torch.cuda.mem_get_info` on CUDA, MemAvailable (psutil) on the CPU. The figures are
estimates, not measurements: benchmarks/RESULTS.md compares them with measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import BadInput

GIB = 1024**3
# Calibrated against live-tensor peaks of SD 1.5-sized models at 512x512 on the CPU (benchmarks/bench_memory.py,
# benchmarks/RESULTS.md "Memory: estimate vs measured"): a UNet call held 130 MiB per sample (20.6 working
# tensors of the largest level beside the kept skips: the GEGLU feed-forward alone makes 8c + 4c + 4c), a
# decode 2.9 of its largest activation per image (4 leaves room for convolution workspaces on a GPU).
UNET_WORK = 21       # working tensors of the largest level beside the kept skips
VAE_LIVE = 4         # live tensors of the VAE decoder's largest activation, per image
TAESD_CHANNELS = 64
TAESD_SAVED = (8, 22, 22, 22)   # tensors kept per pixel at full, 1/2, 1/4 and 1/8 resolution (TAESD decoder)
LOSS_WORK = 30       # image-sized fp32 tensors a loss and the clamp may hold (3 channels each)


@dataclass(frozen=True)
class Estimate:
    """Peak activation bytes of the heaviest call of a render, by phase."""

    unet: int                      # one UNet call of a chunk (CFG doubles the samples)
    vae: int                       # the final decode (one image per call)
    guidance: int                  # one cell's loss decode with its backward (0 when not guided)
    width: int
    height: int
    cells_per_call: int

    @property
    def peak(self) -> int:
        return max(self.unet, self.vae, self.guidance)

    def describe(self) -> str:
        parts = f"UNet {self.unet / GIB:.1f}, VAE decode {self.vae / GIB:.1f}, loss decode {self.guidance / GIB:.1f}"
        return (f"about {self.peak / GIB:.1f} GiB ({parts}) at {self.width}x{self.height}, "
                f"{self.cells_per_call} cell(s) per call")


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def unet_bytes(unet_config, h: int, w: int, samples: int, dtype: torch.dtype) -> int:
    """Activations of one no-grad UNet call on `samples` latents of h x w."""
    channels = list(unet_config.block_out_channels)
    layers = unet_config.layers_per_block
    layers = max(layers) if isinstance(layers, (list, tuple)) else layers
    kept, largest = 0, 0
    for level, c in enumerate(channels):
        size = c * (h >> level) * (w >> level)
        kept += (layers + 1) * size       # down-block outputs wait for the matching up block
        largest = max(largest, size)
    return samples * (kept + UNET_WORK * largest) * _bytes(dtype)


def _vae_levels(vae_config, h: int, w: int) -> list[tuple[int, int, int]]:
    """(channels, pixels, resnet layers) of each decoder up block and its upsampled output, low to high res."""
    rev = list(reversed(vae_config.block_out_channels))
    layers = vae_config.layers_per_block + 1
    out = []
    for j, c in enumerate(rev):
        out.append((c, (h << j) * (w << j), layers))
        if j < len(rev) - 1:
            out.append((c, (h << (j + 1)) * (w << (j + 1)), 0))   # the upsampler's output
    return out


def vae_decode_bytes(vae_config, h: int, w: int, images: int, dtype: torch.dtype) -> int:
    """Live activations of a no-grad decode of `images` latents of h x w."""
    largest = max(c * px for c, px, _ in _vae_levels(vae_config, h, w))
    return images * VAE_LIVE * largest * _bytes(dtype)


def taesd_backward_bytes(height: int, width: int, dtype: torch.dtype) -> int:
    """Activations TAESD keeps for one image's backward."""
    return sum(TAESD_CHANNELS * k * (height >> s) * (width >> s) for s, k in enumerate(TAESD_SAVED)) * _bytes(dtype)


def guidance_bytes(model, decoder: str, width: int, height: int) -> int:
    """One cell's loss decode and backward with `decoder` (vae | tiny | linear | TAESD folder)."""
    pipe = model.pipe
    f = pipe.vae_scale_factor
    loss = LOSS_WORK * 3 * width * height * 4
    if decoder == "linear":
        return LOSS_WORK * 3 * (width // f) * (height // f) * 4
    if decoder == "vae":
        from .decoder_memory import vae_guidance_bytes   # measured (benchmarks/bench_sdxl_vae_memory.py)

        return vae_guidance_bytes(model, width, height) + loss
    return taesd_backward_bytes(height, width, model.dtype) + loss


def estimate(model, recipes: Sequence, batch_size: int = 8, mode: str = "stacked") -> Estimate:
    """The heaviest call of rendering `recipes` (grouped and chunked as render() does)."""
    groups: dict[tuple, list] = {}
    for r in recipes:
        groups.setdefault(r.batch_key(), []).append(r)
    pipe = model.pipe
    f = pipe.vae_scale_factor
    worst: Estimate | None = None
    for cells in groups.values():
        r = cells[0]
        n = min(batch_size, len(cells)) if mode == "stacked" else 1
        h, w = r.height // f, r.width // f
        cfg = 2 if r.cfg > 1 and pipe.unet.config.time_cond_proj_dim is None else 1
        guided = guidance_bytes(model, r.guidance.decoder, r.width, r.height) if r.guided else 0
        e = Estimate(unet_bytes(pipe.unet.config, h, w, cfg * n, model.dtype),
                     vae_decode_bytes(pipe.vae.config, h, w, 1, pipe.vae.dtype), guided, r.width, r.height, n)
        if worst is None or e.peak > worst.peak:
            worst = e
    if worst is None:
        raise BadInput("nothing to render")
    return worst


def available_bytes(device: torch.device) -> int:
    """Free memory where the render runs: CUDA's free bytes, or the host's MemAvailable."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(model, recipes: Sequence, batch_size: int = 8, mode: str = "stacked") -> Estimate:
    """Raise BadInput (estimate and ways out) when the heaviest call would not fit; else the estimate."""
    e = estimate(model, recipes, batch_size, mode)
    free = available_bytes(model.device)
    if e.peak > free:
        ways = ["a smaller size"]
        if e.cells_per_call > 1:
            ways.append("--batch-size 1")
        if e.guidance >= max(e.unet, e.vae):
            ways.append("--loss-decoder tiny or linear")
            if model.device.type == "cpu":
                ways.append("a GPU (the VAE is gradient-checkpointed there)")
        raise BadInput(f"this render needs {e.describe()}, but only {free / GIB:.1f} GiB is available on "
                       f"{model.device.type}; use {', '.join(ways)}")
    return e


def live_tensor_peak(prof) -> int:
    """Measured peak of a `torch.profiler.profile(profile_memory=True)` run: the largest running sum of its
    allocation (+) and free (-) events, i.e. live tensor bytes beyond what existed before (CPU or CUDA)."""
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


estimate_memory = estimate   # the public name (sd_styles.estimate_memory)
