"""SDXL refiner: load it next to a base (sharing identical parts) and split one schedule between the two.

As diffusers' "ensemble of experts": the base runs the steps whose timestep is >= the cutoff
`round(T - switch * T)` (`denoising_end=switch`, pipeline_stable_diffusion_xl.py L1171-L1183), the
refiner the rest (`denoising_start=switch`, pipeline_stable_diffusion_xl_img2img.py `get_timesteps`
L649-L686: +1 step for second-order schedulers when the count is even, and `set_begin_index`), on the
base's latents with no noise added. Both halves use the recipe's scheduler, each configured from its
own model's scheduler config, and continue the same per-cell generators.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

log = logging.getLogger(__name__)

SHAREABLE = ("text_encoder_2", "tokenizer_2", "vae")   # parts a refiner may share with its base
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CHUNK = 1 << 24


def folder_digest(folder: Path) -> str | None:
    """sha256 over a component folder: its weight files' bytes (and tokenizer files), plus its config.

    Config keys starting with "_" (diffusers / transformers versions, paths) are left out. None when absent.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    total = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.name == "config.json":
            config = json.loads(path.read_text(encoding="utf-8"))
            blob = json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True).encode()
        elif path.suffix in _WEIGHT_SUFFIXES or folder.name.startswith("tokenizer"):
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(block)
            blob = digest.digest()
        else:
            continue
        total.update(path.name.encode() + b"\0" + blob)
    return total.hexdigest()


def _model_folder(model) -> Path | None:
    """Local folder of a model's files: the folder given, or the hub snapshot it was loaded from."""
    if model.folder is None and model.source.count("/") == 1 and not Path(model.source).exists():
        from huggingface_hub import snapshot_download

        try:  # already downloaded by from_pretrained: resolves to the cached snapshot, no network
            model.folder = Path(snapshot_download(model.source, revision=model.revision, local_files_only=True))
        except (OSError, ValueError) as err:
            log.info("no local snapshot of %s (%s): nothing is shared with the refiner", model.source, err)
    return model.folder


def component_digest(model, part: str) -> str | None:
    """sha256 of one component's files (cached on the model), None when unknown."""
    if part not in model.digests:
        folder = _model_folder(model)
        model.digests[part] = folder_digest(folder / part) if folder is not None else None
    return model.digests[part]


def check_refiner_sources(base: str, refiner: str) -> None:
    """Fail before any weights load when the base or the refiner is not SDXL (as far as their files tell)."""
    from .models import source_family

    family = source_family(base)
    if family not in (None, "sdxl"):
        raise BadInput(f"--refiner needs an SDXL base model; {base} is {family}")
    family = source_family(refiner)
    if family not in (None, "sdxl"):
        raise BadInput(f"--refiner {refiner} is not an SDXL model (its files say {family})")


def load_refiner(model, source: str, *, revision: str | None = None):
    """Load the SDXL refiner `source` for the SDXL `model` and attach it as `model.refiner`.

    Its text_encoder_2 + tokenizer_2 and its VAE are the base's own objects when their files are
    identical (sha256), so they take no extra memory and concepts loaded into the base reach it.
    """
    from .models import SDXL_PIPELINES, StyleModel, _from_pretrained, place
    from .tiny_sdxl import TINY_SDXL_BUILDERS, TINY_SDXL_VERSION, build_tiny_sdxl

    if model.family != "sdxl":
        raise BadInput(f"--refiner needs an SDXL base model; {model.source} is {model.family}")
    digests, folder = {}, None
    if source in TINY_SDXL_BUILDERS:
        (pipe, digests), rev = build_tiny_sdxl(source), f"v{TINY_SDXL_VERSION}"
    else:
        pipe, family = _from_pretrained(source, revision, model.dtype)
        if family != "sdxl":
            raise BadInput(f"--refiner {source} is not an SDXL model (its files say {family}); "
                           f"a refiner is one of {', '.join(SDXL_PIPELINES)}")
        rev = revision or getattr(pipe.unet.config, "_commit_hash", None)
        local = Path(source).expanduser()
        folder = local.resolve() if local.is_dir() else None
    refiner = StyleModel(pipe=pipe, source=source, revision=rev, device=model.device, dtype=model.dtype,
                         vae_dtype=model.vae_dtype, family="sdxl", folder=folder, digests=digests)
    shared = share_components(model, refiner)
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipe, name, None)
        if module is not None and name not in shared:
            place(module, model.device, model.vae_dtype if name == "vae" else model.dtype)
    pipe.set_progress_bar_config(disable=True)
    model.refiner = refiner
    return refiner


def share_components(base, refiner) -> list[str]:
    """Point the refiner's text_encoder_2 / tokenizer_2 and VAE at the base's when their files are identical."""
    same = {part: component_digest(base, part) is not None and component_digest(base, part) ==
            component_digest(refiner, part) for part in SHAREABLE}
    shared = []
    if same["text_encoder_2"] and same["tokenizer_2"]:  # an encoder is only shared with its own vocabulary
        refiner.pipe.register_modules(text_encoder_2=base.pipe.text_encoder_2, tokenizer_2=base.pipe.tokenizer_2)
        refiner.concepts, refiner.token_slots = base.concepts, base.token_slots
        shared += ["text_encoder_2", "tokenizer_2"]
    if same["vae"]:
        refiner.pipe.register_modules(vae=base.pipe.vae)
        refiner.decoders = base.decoders
        shared.append("vae")
    log.info("refiner %s shares %s with %s", refiner.source, ", ".join(shared) or "nothing", base.source)
    return shared


def shares_text_encoder(model) -> bool:
    """Whether `model.refiner` uses the base's own text_encoder_2 (so base concepts reach it)."""
    return model.refiner is not None and model.refiner.pipe.text_encoder_2 is model.pipe.text_encoder_2


def offload_order(model) -> list:
    """Base and refiner modules, each once, in the order a render first needs them."""
    pipes = [model.pipe] + ([model.refiner.pipe] if model.refiner is not None else [])
    names = [("text_encoder", "text_encoder_2", "unet")] * len(pipes) + [("vae",)] * len(pipes)
    order = []
    for pipe, group in zip(pipes * 2, names):
        for name in group:
            module = getattr(pipe, name, None)
            if module is not None and all(module is not seen for seen in order):
                order.append(module)
    return order


def enable_cpu_offload(model, device) -> None:
    """Model CPU offload over base + refiner: a module moves to `device` when it runs, and the previous one back.

    diffusers' `enable_model_cpu_offload` hooks one pipeline; run on two pipelines that share modules
    the second would strip the first's hooks. One accelerate chain over both (`cpu_offload_with_hook`,
    the function diffusers itself uses) keeps at most two models on the GPU: the base UNet goes back to
    the CPU when the refiner's UNet starts.
    """
    from accelerate import cpu_offload_with_hook

    hook = None
    for module in offload_order(model):
        module.to("cpu")
        _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)


def cutoff_timestep(scheduler, switch: float) -> int:
    """The first timestep the refiner handles is below this: round(T - switch * T)."""
    total = scheduler.config.num_train_timesteps
    return int(round(total - switch * total))


def base_end(scheduler, switch: float) -> int:
    """How many of the schedule's steps the base runs (`denoising_end=switch`)."""
    return int((scheduler.timesteps >= cutoff_timestep(scheduler, switch)).sum())


def refiner_begin(scheduler, switch: float) -> int:
    """Index of the refiner's first step (`denoising_start=switch`), with the second-order +1 rule."""
    count = int((scheduler.timesteps < cutoff_timestep(scheduler, switch)).sum())
    if scheduler.order == 2 and count % 2 == 0:  # never cut between a 2nd-order scheduler's two evaluations
        count += 1
    return len(scheduler.timesteps) - count


@dataclass
class Phase:
    """One model's stretch of the schedule: steps begin..end-1 of its own scheduler's timesteps."""

    model: object                  # the StyleModel whose UNet runs these steps
    scheduler: object              # a fresh scheduler, timesteps set
    begin: int                     # first step index
    end: int                       # one past the last step index
    begin_index: int | None = None  # passed to scheduler.set_begin_index (None: leave the scheduler as it is)


def plan_phases(model, recipe, device) -> list[Phase]:
    """[base] for a recipe without refiner; [base up to the switch, refiner from it] with one."""
    from .schedulers import make_scheduler

    def fresh(m):
        scheduler = make_scheduler(recipe.scheduler, m.pipe.scheduler.config)
        scheduler.set_timesteps(recipe.steps, device=device)
        return scheduler

    base = fresh(model)
    if recipe.refiner is None:
        return [Phase(model, base, 0, len(base.timesteps), 0 if model.family == "sdxl" else None)]
    refiner = attached_refiner(model, recipe.refiner)
    missing = [c.token for c in recipe.concepts if c.token not in refiner.concepts]
    if missing:  # a refiner with its own text_encoder_2 would read the token as plain text: refuse
        raise BadInput(f"the refiner {refiner.source} has its own text_encoder_2 and concept(s) "
                       f"{', '.join(missing)} are not loaded into it; load them into model.refiner too")
    second = fresh(refiner)
    start = refiner_begin(second, recipe.refiner_switch)
    return [Phase(model, base, 0, base_end(base, recipe.refiner_switch), 0),
            Phase(refiner, second, start, len(second.timesteps), start)]


def attached_refiner(model, source: str):
    """The refiner loaded on `model` if it is `source` (BadInput if another one or none is loaded)."""
    ref = model.refiner
    if ref is None or ref.source != source:
        have = f"{ref.source} is loaded" if ref is not None else "none is loaded"
        raise BadInput(f"the recipe uses the refiner {source} but {have}; "
                       f"load it with load_model(..., refiner={source!r}) or load_refiner(model, {source!r})")
    return ref
