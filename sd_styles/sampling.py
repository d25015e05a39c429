"""The hand-written denoising loop: seeded noise, scheduler steps, VAE decode (prompts: conditioning.py).

With no loss it reproduces diffusers' `StableDiffusionPipeline` step for step. A *denoiser* is the
model function `(latents, i, t) -> (latents, model_output)`: the plain one runs the UNet with
classifier-free guidance; wrappers (see `guidance.py`) may move the latents before the scheduler
steps. The scheduler steps exactly once per step, here and nowhere else.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm.auto import tqdm

from .schedulers import is_sigma_space

Denoiser = Callable[[torch.Tensor, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
StepCallback = Callable[[dict], None]


def initial_latents(pipe, scheduler, generators: list[torch.Generator], width: int, height: int,
                    dtype: torch.dtype, device) -> torch.Tensor:
    """Seeded noise (B, 4, h, w), drawn per cell from its own CPU generator, scaled for the scheduler."""
    f = pipe.vae_scale_factor
    shape = (len(generators), pipe.unet.config.in_channels, height // f, width // f)
    return randn_tensor(shape, generator=generators, device=torch.device(device), dtype=dtype) * scheduler.init_noise_sigma


def uses_cfg(pipe, cfg: float) -> bool:
    """Classifier-free guidance runs when cfg > 1 (as diffusers decides it)."""
    return cfg > 1 and pipe.unet.config.time_cond_proj_dim is None


def make_denoiser(unet, scheduler, conds: list, cfg: float, do_cfg: bool) -> Denoiser:
    """eps = eps_u + cfg * (eps_c - eps_u), the UNet under no-grad, one call per chunk of cells.

    `conds[j]` is chunk j's `conditioning.Conditioning` (text embeddings [negatives; prompts] with CFG,
    plus SDXL's added conditioning): one UNet call per chunk. A chunk's float rounding depends on its
    shape (cells per call, a cell's position), not on which cells share it (tests/test_batching.py),
    so a recorded call shape is enough to redo a cell bit for bit.
    """
    sizes = [c.rows // (2 if do_cfg else 1) for c in conds]

    def denoise(latents, i, t):
        outs = []
        for x, c in zip(latents.split(sizes), conds):  # x: (n, 4, h, w)
            x_in = scheduler.scale_model_input(torch.cat([x] * 2) if do_cfg else x, t)
            with torch.no_grad():
                out = unet(x_in, t, **c.unet_kwargs(), return_dict=False)[0]
            if do_cfg:
                uncond, cond = out.chunk(2)
                out = uncond + cfg * (cond - uncond)
            outs.append(out)
        return latents, torch.cat(outs)

    return denoise


def noise_level(scheduler, i: int, t: torch.Tensor) -> float:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar) of step i, for any scheduler (reads the device: not per step)."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None:
        return float(sigmas[i])
    abar = float(scheduler.alphas_cumprod[int(t)])
    return ((1 - abar) / abar) ** 0.5


def noise_levels(scheduler) -> list[float]:
    """sigma of every step, read from the device once per batch so the step loop never waits on it."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None:
        return sigmas.detach().cpu().double().tolist()
    abar = scheduler.alphas_cumprod.detach().cpu().double()
    return [((1 - float(abar[t])) / float(abar[t])) ** 0.5 for t in scheduler.timesteps.detach().cpu().tolist()]


def predict_x0(scheduler, latents: torch.Tensor, out: torch.Tensor, i: int, t: torch.Tensor,
               sigma: float | None = None) -> torch.Tensor:
    """x0 from the model output: sigma space x0 = x - sigma * eps; alpha space x0 = (x - s * eps) / a.

    `sigma`: step i's noise level from `noise_levels` (looked up on the scheduler when not given)."""
    sigma = noise_level(scheduler, i, t) if sigma is None else sigma
    a = (1 + sigma**2) ** -0.5           # sqrt(alpha_bar)
    s = sigma * a                        # sqrt(1 - alpha_bar)
    x = latents * a if is_sigma_space(scheduler) else latents  # the variance-preserving latent the UNet sees
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x - s * out) / a
    if kind == "v_prediction":
        return a * x - s * out
    return out  # "sample"


def guidance_step_size(scheduler, i: int, t: torch.Tensor, sigma: float | None = None) -> float:
    """How far latents move per unit of loss gradient: sigma^2 in sigma space, (1 - alpha_bar) in alpha space."""
    sigma = noise_level(scheduler, i, t) if sigma is None else sigma
    return sigma**2 if is_sigma_space(scheduler) else sigma**2 / (1 + sigma**2)


def step_kwargs(scheduler, generators: list[torch.Generator]) -> dict:
    """eta=0 for DDIM, the per-cell generators for stochastic samplers (as the pipeline passes them)."""
    params = set(inspect.signature(scheduler.step).parameters)
    kw = {}
    if "eta" in params:
        kw["eta"] = 0.0
    if "generator" in params:
        kw["generator"] = generators
    return kw


def sample(denoise: Denoiser, scheduler, latents: torch.Tensor, generators: list[torch.Generator], *,
           callback: StepCallback | None = None, desc: str = "denoising", progress: bool = True,
           begin: int = 0, end: int | None = None, begin_index: int | None = None) -> torch.Tensor:
    """Run steps begin..end-1 of the schedule (default: all): denoise, then one scheduler step per timestep.

    `begin_index` goes to `scheduler.set_begin_index` (as SDXL's pipelines do; an SDXL refiner starts mid-schedule).
    """
    kw = step_kwargs(scheduler, generators)
    if begin_index is not None and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin_index)
    end = len(scheduler.timesteps) if end is None else end
    sigmas = noise_levels(scheduler) if callback is not None else None   # read once, not per step
    for i in tqdm(range(begin, end), desc=desc, disable=not progress, leave=False):
        t = scheduler.timesteps[i]
        latents, out = denoise(latents, i, t)
        x0 = predict_x0(scheduler, latents, out, i, t, sigmas[i]) if sigmas is not None else None
        latents = scheduler.step(out, t, latents, **kw, return_dict=False)[0]
        if callback is not None:
            callback({"i": i, "t": t, "latents": latents, "x0": x0})
    return latents


def decode(vae, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Raw latents -> images (B, 3, H, W) in [0, 1], `chunk` latents per VAE call (default: all).

    Renders decode one image per call (`chunk=1`, as diffusers' `vae.enable_slicing()`): the decode's memory
    does not grow with the batch, a cell's decode does not depend on the other cells of its call, and on
    the CPU it is faster (benchmarks/RESULTS.md: ten 128x128 images one per call take 0.77x one call of ten).
    """
    parts = latents.split(chunk or latents.shape[0])
    z = [unscale_latents(vae, p.to(vae.dtype)) for p in parts]
    return torch.cat([(vae.decode(p, return_dict=False)[0] / 2 + 0.5).clamp(0, 1) for p in z])


def unscale_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """UNet latents -> VAE latents: z / scaling_factor, or z * std / scaling_factor + mean when the VAE has them."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return latents / vae.config.scaling_factor
    shape = (1, len(mean), 1, 1)
    mean = torch.tensor(mean).view(shape).to(latents.device, latents.dtype)
    std = torch.tensor(std).view(shape).to(latents.device, latents.dtype)
    return latents * std / vae.config.scaling_factor + mean


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[0, 1] images -> 8-bit PIL images, rounded as diffusers' VaeImageProcessor does."""
    arr = images.detach().cpu().permute(0, 2, 3, 1).float().numpy()
    return [Image.fromarray(a) for a in (arr * 255).round().astype(np.uint8)]
