"""Load a Stable Diffusion model once: hub id, local diffusers folder, or the built-in `tiny` model."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline
from packaging.version import Version

from . import hub
from .errors import BadInput, one_line
from .hub import DEFAULT_MODEL, MODEL_FIX, is_hub_id
from .tiny import TINY_ID, TINY_VERSION, build_tiny_pipeline
from .tiny_sdxl import TINY_SDXL_BUILDERS, TINY_SDXL_VERSION, build_tiny_sdxl

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FAMILIES = ("sd1", "sdxl")  # sd1: StableDiffusionPipeline models (SD 1.x and 2.x); sdxl: SDXL base / refiner
SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")

log = logging.getLogger(__name__)
# diffusers 0.40 renamed from_pretrained's `torch_dtype` to `dtype` (the old name warns); older releases ignore `dtype`
_DTYPE_KEYWORD = "dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype"


@dataclass
class StyleModel:
    """A loaded model: the diffusers pipeline (a component container) plus where it runs."""

    pipe: DiffusionPipeline        # a component container: StableDiffusionPipeline (sd1), StableDiffusionXL-
                                   # Pipeline (sdxl base: + tokenizer_2, text_encoder_2) or StableDiffusionXL-
                                   # Img2ImgPipeline (sdxl refiner: tokenizer and text_encoder are None)
    source: str                    # what the user passed: hub id, folder or "tiny"
    revision: str | None           # hub commit hash when known, the tiny version for "tiny"
    device: torch.device           # where the denoising runs (the execution device under CPU offload)
    dtype: torch.dtype             # UNet / text-encoder dtype
    vae_dtype: torch.dtype         # fp32 when the VAE is kept out of fp16 for numerical safety
    family: str = "sd1"            # one of FAMILIES, read from the model's own files (never from its name)
    concepts: dict = field(default_factory=dict)  # token -> loaded concept, kept by sd_styles.concepts
    token_slots: dict = field(default_factory=dict)  # vocabulary token we added -> its id (reused on reload)
    decoders: dict = field(default_factory=dict)     # loss-decoder name -> decoder, built once per model
    losses: dict = field(default_factory=dict)       # loss name -> loss (CLIP loaded once), see losses.model_loss
    folder: Path | None = None     # local folder the weights came from (hub snapshot folder: found lazily)
    digests: dict = field(default_factory=dict)      # component -> sha256 of its files (sd_styles.refiner)
    refiner: "StyleModel | None" = None  # SDXL refiner attached by sd_styles.refiner.load_refiner

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) the UNet was trained at."""
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return side, side

    def enable_memory_savers(self, *, attention_slicing: bool = False, vae_slicing: bool = False,
                             vae_tiling: bool = False, cpu_offload: bool = False) -> "StyleModel":
        """Trade speed for memory (16 GB T4 and below): diffusers' own switches, on the refiner too.

        Renders already decode one image per call; `vae_slicing` makes `model.pipe` called directly do so.

        `cpu_offload` keeps each model on the CPU until it runs (one offload chain over base and refiner,
        so a component they share is moved once, see sd_styles.refiner.enable_cpu_offload).
        """
        for pipe in [self.pipe] + ([self.refiner.pipe] if self.refiner is not None else []):
            if attention_slicing:
                pipe.enable_attention_slicing()
            if vae_slicing:
                pipe.vae.enable_slicing()
            if vae_tiling:
                pipe.vae.enable_tiling()
        if cpu_offload:
            if self.device.type != "cuda":
                raise BadInput("cpu_offload needs a CUDA device")
            if self.refiner is None:
                self.pipe.enable_model_cpu_offload(device=self.device)
            else:
                from .refiner import enable_cpu_offload

                enable_cpu_offload(self, self.device)
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


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move a component to `device`, casting only when its dtype differs."""
    module.to(device) if module.dtype == dtype else module.to(device, dtype)


def read_model_index(source: str, revision: str | None = None) -> dict:
    """The model's model_index.json (plus `unet_config` for local folders): what its family is read from."""
    local = Path(source).expanduser()
    if local.is_dir():
        index = json.loads((local / "model_index.json").read_text(encoding="utf-8"))
        unet = local / "unet" / "config.json"
        if unet.is_file():
            index["unet_config"] = json.loads(unet.read_text(encoding="utf-8"))
        return index
    # hub: fetches model_index.json only, from the cache alone when the hub is off or unreachable
    return dict(DiffusionPipeline.load_config(source, revision=revision, local_files_only=hub.local_only()))


def family_of(index: dict) -> str:
    """sdxl when the pipeline class is an SDXL one or the UNet takes text_time conditioning, else sd1."""
    unet = index.get("unet_config") or {}
    if index.get("_class_name") in SDXL_PIPELINES or unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd1"


def source_family(source: str, revision: str | None = None) -> str | None:
    """The family of a model before loading it (None when its files cannot be read yet, e.g. offline)."""
    if source == TINY_ID:
        return "sd1"
    if source in TINY_SDXL_BUILDERS:
        return "sdxl"
    try:
        return family_of(read_model_index(source, revision))
    except (OSError, ValueError):
        return None


def pipeline_class(source: str | Path | dict, revision: str | None = None) -> type:
    """The diffusers pipeline class that loads `source` (a folder, hub id or its model_index dict)."""
    import diffusers

    index = source if isinstance(source, dict) else read_model_index(str(source), revision)
    if family_of(index) == "sd1":
        return diffusers.StableDiffusionPipeline
    text_encoder = index.get("text_encoder")
    refiner_like = not text_encoder or text_encoder[0] is None  # SDXL refiner: only text_encoder_2
    return diffusers.StableDiffusionXLImg2ImgPipeline if refiner_like else diffusers.StableDiffusionXLPipeline


def _load_kwargs(family: str) -> dict:
    # SD 1.x: no safety checker (we decode ourselves). SDXL: no invisible watermark (it changes pixels and
    # needs an extra package), as in the reference comparisons.
    return {"safety_checker": None, "requires_safety_checker": False} if family == "sd1" else {"add_watermarker": False}


def _from_pretrained(source: str, revision: str | None, dtype: torch.dtype) -> tuple[DiffusionPipeline, str]:
    """(pipeline, family) of a hub id or local diffusers folder."""
    local = Path(source).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise BadInput(f"--model {source}: folder has no model_index.json (not a diffusers model folder)")
        source, revision = str(local), None
    elif not is_hub_id(source):
        raise BadInput(f"--model {source}: no such folder; give a hub id (org/name), a local diffusers folder, or 'tiny'")
    cache_only = is_hub_id(source) and hub.require_cached("--model", source, "model_index.json", MODEL_FIX, revision)
    try:
        index = read_model_index(source, revision)
        family = family_of(index)
        pipe = pipeline_class(index).from_pretrained(source, revision=revision, **{_DTYPE_KEYWORD: dtype},
                                                     local_files_only=cache_only, **_load_kwargs(family))
        return pipe, family
    except OSError as err:  # huggingface_hub raises OSError subclasses for offline / missing / gated repos
        raise BadInput(f"--model {source}: cannot load it ({one_line(err)}). It may not be fully cached and the hub "
                       f"may be unreachable: {MODEL_FIX}") from err


def hub_commit(source: str, revision: str | None = None) -> str | None:
    """The commit of the cached hub snapshot a model was loaded from (None for local folders)."""
    return hub.snapshot_revision(source, "model_index.json", revision) if is_hub_id(source) else None


def load_model(source: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
               revision: str | None = None, refiner: str | None = None,
               refiner_revision: str | None = None) -> StyleModel:
    """Load `source` (hub id, local folder, 'tiny' or 'tiny-sdxl') on the best device, ready to render.

    `refiner` (SDXL only) also loads a refiner (`load_refiner`), used by recipes made for this model.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder, digests = None, {}
    if source == TINY_ID:
        pipe, rev, family = build_tiny_pipeline(), f"v{TINY_VERSION}", "sd1"
    elif source in TINY_SDXL_BUILDERS:
        (pipe, digests), rev, family = build_tiny_sdxl(source), f"v{TINY_SDXL_VERSION}", "sdxl"
    else:
        pipe, family = _from_pretrained(source, revision, dt)
        rev = hub_commit(source, revision) or revision  # the snapshot's commit: recipes record it, rerun pins it
        local = Path(source).expanduser()
        folder = local.resolve() if local.is_dir() else None
    # The VAE overflows in fp16 on some inputs (NaN / black images); keep it in fp32 when its config asks.
    vae_dt = torch.float32 if dt == torch.float16 and getattr(pipe.vae.config, "force_upcast", True) else dt
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        if getattr(pipe, name, None) is not None:
            place(getattr(pipe, name), dev, vae_dt if name == "vae" else dt)
    pipe.set_progress_bar_config(disable=True)
    model = StyleModel(pipe=pipe, source=source, revision=rev, device=dev, dtype=dt, vae_dtype=vae_dt,
                       family=family, folder=folder, digests=digests)
    if refiner is not None:
        from .refiner import load_refiner

        load_refiner(model, refiner, revision=refiner_revision)
    elif refiner_revision is not None:
        raise BadInput("refiner_revision needs a refiner")
    return model
