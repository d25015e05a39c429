"""Load a Stable Diffusion model once: hub id, local diffusers folder, or the built-in `tiny` model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import StableDiffusionPipeline
from packaging.version import Version

from .errors import BadInput
from .tiny import TINY_ID, TINY_VERSION, build_tiny_pipeline

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

log = logging.getLogger(__name__)
# diffusers 0.40 renamed from_pretrained's `torch_dtype` to `dtype` (the old name warns); older releases ignore `dtype`
_DTYPE_KEYWORD = "dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype"


@dataclass
class StyleModel:
    """A loaded model: the diffusers pipeline (a component container) plus where it runs."""

    pipe: StableDiffusionPipeline  # components: unet, vae, text_encoder, tokenizer, scheduler
    source: str                    # what the user passed: hub id, folder or "tiny"
    revision: str | None           # hub commit hash when known, the tiny version for "tiny"
    device: torch.device           # where the denoising runs (the execution device under CPU offload)
    dtype: torch.dtype             # UNet / text-encoder dtype
    vae_dtype: torch.dtype         # fp32 when the VAE is kept out of fp16 for numerical safety
    concepts: dict = field(default_factory=dict)  # token -> loaded concept, kept by sd_styles.concepts
    token_slots: dict = field(default_factory=dict)  # vocabulary token we added -> its id (reused on reload)
    decoders: dict = field(default_factory=dict)     # loss-decoder name -> decoder, built once per model
    losses: dict = field(default_factory=dict)       # loss name -> loss (CLIP loaded once), see losses.model_loss

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) the UNet was trained at."""
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return side, side

    def enable_memory_savers(self, *, attention_slicing: bool = False, vae_slicing: bool = False,
                             vae_tiling: bool = False, cpu_offload: bool = False) -> "StyleModel":
        """Trade speed for memory (16 GB T4 and below): diffusers' own switches."""
        if attention_slicing:
            self.pipe.enable_attention_slicing()
        if vae_slicing:
            self.pipe.vae.enable_slicing()
        if vae_tiling:
            self.pipe.vae.enable_tiling()
        if cpu_offload:
            if self.device.type != "cuda":
                raise BadInput("cpu_offload needs a CUDA device")
            self.pipe.enable_model_cpu_offload(device=self.device)
        return self


def resolve_device(device: str = "auto") -> torch.device:
    """auto -> cuda, then mps, then cpu."""
    if device not in DEVICES:
        raise BadInput(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda asked for, but torch sees no CUDA GPU; use --device auto or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise BadInput("--device mps asked for, but this torch has no MPS backend; use --device auto or cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto -> fp16 on accelerators, fp32 on the CPU (CPU half precision is slow and lossy)."""
    if dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if dtype not in DTYPES:
        raise BadInput(f"unknown dtype {dtype!r}; allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _looks_like_path(source: str) -> bool:
    # hub ids are exactly "org/name"; anything else is meant as a folder
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") != 1


def _from_pretrained(source: str, revision: str | None, dtype: torch.dtype) -> StableDiffusionPipeline:
    local = Path(source).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise BadInput(f"--model {source}: folder has no model_index.json (not a diffusers model folder)")
        source = str(local)
    elif _looks_like_path(source):
        raise BadInput(f"--model {source}: no such folder; give a hub id (org/name), a local diffusers folder, or 'tiny'")
    try:
        return StableDiffusionPipeline.from_pretrained(
            source, revision=revision, safety_checker=None, requires_safety_checker=False, **{_DTYPE_KEYWORD: dtype})
    except OSError as err:  # huggingface_hub raises OSError subclasses for offline / missing / gated repos
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInput(
            f"--model {source}: cannot load it ({first[:160]}). It is not cached and the hub may be unreachable: "
            "use --model tiny for an offline demo, or a local diffusers folder") from err


def load_model(source: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
               revision: str | None = None) -> StyleModel:
    """Load `source` (hub id, local diffusers folder or 'tiny') on the best device, ready to render."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if source == TINY_ID:
        pipe, rev = build_tiny_pipeline(), f"v{TINY_VERSION}"
    else:
        pipe = _from_pretrained(source, revision, dt)
        rev = revision or getattr(pipe.unet.config, "_commit_hash", None)
    # The VAE overflows in fp16 on some inputs (NaN / black images); keep it in fp32 when its config asks.
    vae_dt = torch.float32 if dt == torch.float16 and getattr(pipe.vae.config, "force_upcast", True) else dt
    for module, want in ((pipe.unet, dt), (pipe.text_encoder, dt), (pipe.vae, vae_dt)):
        module.to(dev) if module.dtype == want else module.to(dev, want)
    pipe.set_progress_bar_config(disable=True)
    return StyleModel(pipe=pipe, source=source, revision=rev, device=dev, dtype=dt, vae_dtype=vae_dt)
