"""Image decoders for loss guidance: raw latents (N, 4, h, w) -> images (N, 3, H, W) in [0, 1], differentiable.

`vae`: the model's own VAE (faithful; its forward + backward costs ~1.6x a CFG UNet step at 128x128 on
a CPU). `tiny`: TAESD, diffusers' `AutoencoderTiny` from the hub (~14x cheaper than the VAE).
`linear`: a fixed 4x3 latent-to-RGB map (free, coarse, at latent resolution). PATH: a local
AutoencoderTiny folder. Decoders are built once per model (benchmarks/RESULTS.md has the figures).

SDXL works in its own latent space (VAE scaling factor 0.13025, or `latents_mean/std` in the VAE config):
`tiny` is then TAESDXL (`madebyollin/taesdxl`) and `linear` uses the SDXL factors. The family is read from
the model's components (a second text encoder, the UNet's text_time conditioning), never from its name.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import torch

from . import hub
from .errors import BadInput, one_line
from .hub import TAESD_FIX, TAESD_REPOS  # the hub ids live with the other hub facts
from .sampling import unscale_latents  # the final decode's unscaling (latents_mean/std or scaling_factor)
from .speed import compiles_loss_decode

Decoder = Callable[[torch.Tensor], torch.Tensor]

DECODER_NAMES = ("vae", "tiny", "linear")
_ALLOWED = "vae, tiny, linear, or a folder holding an AutoencoderTiny (config.json)"

# Latent -> RGB in [-1, 1]: rgb = z @ FACTORS + BIAS on the UNet's (scaled) latents. The numbers are the
# "latent preview" factors of ComfyUI, comfy/latent_formats.py (classes SD15 and SDXL, `latent_rgb_factors`
# and `latent_rgb_factors_bias`; github.com/comfyanonymous/ComfyUI at commit
# 040a3243468ecefd1f2802592d90458f1ce4d65f), where the previewer applies them to the sampler's x0 in scaled
# latent space (rgb = linear(x0, factors, bias), then (rgb + 1) / 2). SD 1.x has no bias there; SD 2.x
# shares its VAE.
SD1_LATENT_RGB = ((0.3512, 0.2297, 0.3227),
                  (0.3250, 0.4974, 0.2350),
                  (-0.2829, 0.1762, 0.2721),
                  (-0.2120, -0.2616, -0.7177))
SD1_LATENT_RGB_BIAS = (0.0, 0.0, 0.0)
SDXL_LATENT_RGB = ((0.3651, 0.4232, 0.4341),
                   (-0.2533, -0.0042, 0.1068),
                   (0.1076, 0.1111, -0.0362),
                   (-0.3165, -0.2492, -0.2188))
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


def straight_through_clamp(images: torch.Tensor) -> torch.Tensor:
    """Forward clamp(x, 0, 1), backward identity.

    Losses are defined on [0, 1] images, but a hard clamp would zero the gradient of every pixel
    the predicted x0 pushes out of range - often most of them early in sampling.
    """
    return images + (images.clamp(0, 1) - images).detach()


def loss_decode_dtype(vae) -> torch.dtype:
    """The dtype the loss decode runs the VAE in: its own, unless it is fp16 and its config asks for upcasting.

    The SDXL VAE overflows in fp16 (NaN / black images; its config sets `force_upcast`), and diffusers' pipelines
    decode it in fp32. bf16 has fp32's range at half its memory, so such a VAE is decoded in bf16 where the device
    computes it natively (CUDA compute capability 8.0+) and in fp32 elsewhere.
    """
    if vae.dtype != torch.float16 or not getattr(vae.config, "force_upcast", False):
        return vae.dtype
    device = next(vae.parameters()).device
    native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float32


def loss_vae(vae):
    """The VAE to differentiate through: `vae` itself, or a copy in `loss_decode_dtype(vae)`.

    The copy is built once per model (decoders are cached) and only ever used for the loss decode; final
    images keep the model's own VAE.
    """
    dtype = loss_decode_dtype(vae)
    return vae if dtype == vae.dtype else copy.deepcopy(vae).to(dtype).requires_grad_(False)


def vae_decoder(vae, checkpoint: bool = False) -> Decoder:
    """x = D(unscale(z)) / 2 + 1/2 through the model's AutoencoderKL (or a safe-precision copy, see `loss_vae`).

    `checkpoint` recomputes each decoder block in the backward instead of keeping its activations
    (diffusers' gradient checkpointing, per up-block): at 512x512 in fp16 the activations kept for the
    backward drop from ~2.9 GiB to a ~1.7 GiB peak (estimate, benchmarks/RESULTS.md), for one more
    decoder forward. SDXL at 1024x1024: see `sd_styles.decoder_memory`.
    """
    vae = loss_vae(vae)
    if checkpoint and getattr(vae, "_supports_gradient_checkpointing", False):
        vae.enable_gradient_checkpointing()  # only active while grad is enabled: plain decodes are unchanged

    def decode(latents: torch.Tensor) -> torch.Tensor:
        z = unscale_latents(vae, latents.to(vae.dtype))
        # autograd.grad(loss, latents) computes no weight gradients, so the VAE's parameters need no freezing
        images = vae.decode(z, return_dict=False)[0]
        return straight_through_clamp(images.float() / 2 + 0.5)

    return decode


def taesd_decoder(taesd) -> Decoder:
    """TAESD: x = D_tiny(z / scaling_factor) / 2 + 1/2 (scaling_factor is 1.0: TAESD takes the raw latents).

    As in diffusers' pipelines: `vae.decode(latents / vae.config.scaling_factor)`, output in [-1, 1].
    """
    taesd.requires_grad_(False)  # our own copy, never trained: only the latents need a gradient

    def decode(latents: torch.Tensor) -> torch.Tensor:
        images = taesd.decode(latents.to(taesd.dtype) / taesd.config.scaling_factor, return_dict=False)[0]
        return straight_through_clamp(images.float() / 2 + 0.5)

    return decode


def linear_decoder(factors, bias) -> Decoder:
    """x = (z^T W + b) / 2 + 1/2 per latent pixel (W: 4x3): a colour preview at latent resolution."""
    weight = torch.tensor(factors, dtype=torch.float32).t()   # (3, 4)
    offset = torch.tensor(bias, dtype=torch.float32)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        w, b = weight.to(latents.device), offset.to(latents.device)
        rgb = torch.einsum("nchw,kc->nkhw", latents.float(), w) + b.view(1, 3, 1, 1)
        return straight_through_clamp(rgb / 2 + 0.5)

    return decode


def latent_family(pipe) -> str:
    """'sdxl' or 'sd': the VAE latent space the model's UNet denoises in (TAESD vs TAESDXL, linear factors).

    From the model's own components, never its name: SDXL pipelines (base and refiner) carry a second text
    encoder (`text_encoder_2`), and their UNet takes the text_time extra conditioning.
    """
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    unet_config = getattr(getattr(pipe, "unet", None), "config", None)
    return "sdxl" if getattr(unet_config, "addition_embed_type", None) == "text_time" else "sd"


def is_sdxl(pipe) -> bool:
    """SDXL base or refiner (see `latent_family`)."""
    return latent_family(pipe) == "sdxl"


def load_taesd(source: str, device: torch.device, dtype: torch.dtype):
    """AutoencoderTiny from a hub id or a local folder, on `device` in `dtype`, for inference."""
    from diffusers import AutoencoderTiny

    cache_only = hub.is_hub_id(source) and hub.require_cached("--loss-decoder tiny: TAESD", source, "config.json",
                                                              TAESD_FIX)
    try:  # fp32 weights, cast below (`torch_dtype` is deprecated)
        taesd = AutoencoderTiny.from_pretrained(source, local_files_only=cache_only)
    except (OSError, ValueError) as err:  # huggingface_hub's offline / missing errors are OSError subclasses
        raise BadInput(f"--loss-decoder: cannot load TAESD {source!r} ({one_line(err)}). It may not be fully cached "
                       f"and the hub may be unreachable: {TAESD_FIX}") from err
    return taesd.to(device, dtype).eval()


def _build(model, name: str, checkpoint: bool) -> Decoder:
    pipe = model.pipe
    if name == "vae":
        return vae_decoder(pipe.vae, checkpoint=checkpoint)
    family = latent_family(pipe)
    if name == "linear":
        if family == "sdxl":
            return linear_decoder(SDXL_LATENT_RGB, SDXL_LATENT_RGB_BIAS)
        return linear_decoder(SD1_LATENT_RGB, SD1_LATENT_RGB_BIAS)
    source = TAESD_REPOS[family] if name == "tiny" else str(Path(name).expanduser())
    return taesd_decoder(load_taesd(source, model.device, model.dtype))


def make_decoder(model, name: str, checkpoint: bool | None = None) -> Decoder:
    """The decoder `name` for `model`, built once and kept on the model (TAESD loads once, not per step).

    `checkpoint=None`: gradient checkpointing of the VAE on accelerators (memory-bound: the fp16
    VAE backward at 512x512 must fit a 16 GB GPU next to the UNet), off on the CPU (time-bound).
    When `speed.optimize(model, compile=True)` compiled the UNet on an accelerator, the loss decode (VAE or
    TAESD, forward and backward) is compiled too (`speed.compiles_loss_decode`); the linear map is a single
    einsum and stays as it is.
    """
    check_decoder(name)
    if checkpoint is None:
        checkpoint = model.device.type != "cpu"
    compiled = compiles_loss_decode(model)
    cache = model.decoders   # per model: TAESD downloads / loads once, dies with the model
    key = (name, checkpoint, compiled)
    if key not in cache:
        decode = _build(model, name, checkpoint)
        cache[key] = torch.compile(decode) if compiled and name != "linear" else decode
    return cache[key]


def check_decoder(name: str) -> str:
    """Validate a decoder name early (before any weights load): vae | tiny | linear | AutoencoderTiny folder."""
    if name == "tiny" and hub.local_only() and not any(hub.cached_file(r, "config.json") for r in TAESD_REPOS.values()):
        raise hub.missing_file("--loss-decoder tiny: TAESD", TAESD_REPOS["sd"], "config.json", TAESD_FIX)
    if name in DECODER_NAMES:
        return name
    if not isinstance(name, str) or not name.strip():
        raise BadInput(f"--loss-decoder: empty name; allowed: {_ALLOWED}")
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise BadInput(f"unknown loss decoder {name!r} (no such folder); allowed: {_ALLOWED}")
    config = folder / "config.json"
    if not config.is_file():
        raise BadInput(f"--loss-decoder {name}: folder has no config.json; allowed: {_ALLOWED}")
    try:
        cls = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError) as err:
        raise BadInput(f"--loss-decoder {name}: unreadable config.json ({err})") from None
    if cls != "AutoencoderTiny":
        raise BadInput(f"--loss-decoder {name}: config.json describes {cls!r}, not an AutoencoderTiny; "
                       f"allowed: {_ALLOWED}")
    return name
