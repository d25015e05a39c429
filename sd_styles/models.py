"""Load a Stable Diffusion model once: hub id, local diffusers folder, or the built-in `tiny` model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from . import hub
from .errors import BadInput, one_line
from .hub import DEFAULT_MODEL, MODEL_FIX, is_hub_id
from .tiny import TINY_ID, TINY_VERSION, build_tiny_pipeline

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

log = logging.getLogger(__name__)


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


def _from_pretrained(source: str, revision: str | None, dtype: torch.dtype) -> tuple[StableDiffusionPipeline, str | None]:
    """The pipeline and the hub commit it was loaded from (None for a local folder)."""
    local = Path(source).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise BadInput(f"--model {source}: folder has no model_index.json (not a diffusers model folder)")
        source, revision = str(local), None
    elif not is_hub_id(source):
        raise BadInput(f"--model {source}: no such folder; give a hub id (org/name), a local diffusers folder, or 'tiny'")
    cache_only = is_hub_id(source) and hub.require_cached("--model", source, "model_index.json", MODEL_FIX, revision)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, revision=revision, dtype=dtype, safety_checker=None, requires_safety_checker=False,
            local_files_only=cache_only)
    except OSError as err:  # huggingface_hub raises OSError subclasses for offline / missing / gated repos
        raise BadInput(f"--model {source}: cannot load it ({one_line(err)}). It may not be fully cached and the hub "
                       f"may be unreachable: {MODEL_FIX}") from err
    commit = hub.snapshot_revision(source, "model_index.json", revision) if is_hub_id(source) else None
    return pipe, commit


def load_model(source: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
               revision: str | None = None) -> StyleModel:
    """Load `source` (hub id, local diffusers folder or 'tiny') on the best device, ready to render."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if source == TINY_ID:
        pipe, rev = build_tiny_pipeline(), f"v{TINY_VERSION}"
    else:
        pipe, commit = _from_pretrained(source, revision, dt)
        rev = commit or revision  # the snapshot's commit: `rerun` pins it
    # The VAE overflows in fp16 on some inputs (NaN / black images); keep it in fp32 when its config asks.
    vae_dt = torch.float32 if dt == torch.float16 and getattr(pipe.vae.config, "force_upcast", True) else dt
    for module, want in ((pipe.unet, dt), (pipe.text_encoder, dt), (pipe.vae, vae_dt)):
        module.to(dev) if module.dtype == want else module.to(dev, want)
    pipe.set_progress_bar_config(disable=True)
    return StyleModel(pipe=pipe, source=source, revision=rev, device=dev, dtype=dt, vae_dtype=vae_dt)
