"""The Hugging Face hub in one place: what counts as a hub id, whether the hub can be reached, and revisions.

One rule decides hub id versus local path for models, concepts, CLIP and TAESD (`is_hub_id`). The hub
is probed once per process (`local_only`): when it is offline (HF_HUB_OFFLINE) or unreachable, every
load passes `local_files_only=True`, so huggingface_hub never retries a dead connection for a minute,
and a file missing from the cache fails at once with one line naming it (`missing_file`). The commit
of a cached snapshot (`snapshot_revision`) is what recipes record and what `rerun` pins.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from .errors import BadInput

# "org/name" as the hub spells repo ids (huggingface_hub's validate_repo_id, with the org required)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# a name ending like a file is meant as a file, never as a repo (e.g. `styles/ink.safetensors`)
FILE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".png", ".jpg", ".jpeg", ".webp", ".json",
                 ".toml")
PROBE_TIMEOUT_S = 3.0  # one HEAD request to the endpoint; a dead or black-holed hub costs at most this

# The hub ids the package uses by default, and what to do when one of them cannot be had.
DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"                            # clip= loss
TAESD_REPOS = {"sd": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}  # --loss-decoder tiny
MODEL_FIX = "use --model tiny for an offline demo, or a local diffusers folder"
CONCEPT_FIX = ("download it once online, or pass a local file or folder "
               "(offline demo: sd-styles run concepts/tiny_demo.toml)")
CLIP_FIX = "download it once online, or pass a local folder holding a CLIPModel (clip_loss(prompt, model_id=PATH))"
TAESD_FIX = "download it once online, or use --loss-decoder vae or linear, or a local AutoencoderTiny folder"
CONCEPT_WEIGHTS = ("learned_embeds.safetensors", "learned_embeds.bin")  # a hub concept repo holds one of them


def is_hub_id(source: str) -> bool:
    """`org/name` that is not an existing path, does not start like a path and does not end like a file."""
    if not isinstance(source, str) or source.startswith((".", "/", "~")) or "\\" in source:
        return False
    return bool(_HUB_ID.match(source)) and not source.lower().endswith(FILE_SUFFIXES) and not Path(source).exists()


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One HEAD request to the hub endpoint (through huggingface_hub's session and its proxies), once per process."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - any transport failure means "not reachable"; an HTTP status does not
        return False
    return True


def offline_mode() -> bool:
    """HF_HUB_OFFLINE is set (read as huggingface_hub reads it, at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def local_only() -> bool:
    """Load from the cache only: the hub is switched off or cannot be reached (probed once)."""
    return offline_mode() or not hub_reachable()


def why_offline() -> str:
    """Why the hub is not used, for messages."""
    from huggingface_hub import constants

    if offline_mode():
        return "HF_HUB_OFFLINE is set"
    return f"the hub at {constants.ENDPOINT} cannot be reached"


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """The file's path in the local Hugging Face cache, or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Path(found) if isinstance(found, str) else None


def snapshot_of(path: str | Path) -> str | None:
    """The commit hash of a file inside the hub cache (`.../snapshots/<commit>/<file>`), else None."""
    parts = Path(path).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i - 1] == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parts[i]):
            return parts[i]
    return None


def snapshot_revision(repo_id: str, filename: str, revision: str | None = None) -> str | None:
    """The commit of the cached snapshot holding `filename` at `revision` (default: the cached main)."""
    path = cached_file(repo_id, filename, revision)
    return snapshot_of(path) if path is not None else None


def missing_file(what: str, repo_id: str, filename: str, fix: str) -> BadInput:
    """The one-line error for a file that is neither cached nor downloadable now."""
    return BadInput(f"{what} {repo_id}: {filename} is not in the local Hugging Face cache and {why_offline()}; "
                    f"{fix}")


def require_cached(what: str, repo_id: str, filename: str, fix: str, revision: str | None = None) -> bool:
    """When loads are cache-only, fail now unless `filename` is cached; returns `local_only()`."""
    if not local_only():
        return False
    if cached_file(repo_id, filename, revision) is None:
        raise missing_file(what, repo_id, filename, fix)
    return True


def cached_json(source: str, filename: str, revision: str | None = None) -> dict | None:
    """A small JSON file (a config) from a local model folder or the hub cache; None when not at hand."""
    import json

    folder = Path(source).expanduser()
    path = folder / filename if folder.is_dir() else (cached_file(source, filename, revision)
                                                       if is_hub_id(source) else None)
    if path is None or not path.is_file() or path.stat().st_size > 1 << 20:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def preflight(model: str | None = None, concepts=(), losses=(), decoder: str | None = None,
              model_revision: str | None = None) -> None:
    """Before torch loads (seconds): every hub file a command needs is cached, or the hub can be reached.

    `concepts`: sources, or (source, revision) pairs; `losses`: loss names (`clip=...` needs CLIP);
    `decoder`: the loss decoder (`tiny` needs TAESD). Local paths and built-ins are skipped.
    """
    needs = []
    if model and is_hub_id(model):
        needs.append(("--model", model, ("model_index.json",), MODEL_FIX, model_revision))
    for item in concepts:
        source, revision = (item, None) if isinstance(item, str) else item
        if is_hub_id(source):
            needs.append(("concept", source, CONCEPT_WEIGHTS, CONCEPT_FIX, revision))
    if any(isinstance(n, str) and "=" in n and n.partition("=")[0].strip() == "clip" for n in losses):  # clip=TEXT
        needs.append(("clip loss: CLIP model", DEFAULT_CLIP, ("config.json",), CLIP_FIX, None))
    if not needs and decoder != "tiny":
        return
    if not local_only():  # the hub answers: downloads can fill the cache
        return
    if decoder == "tiny" and not any(cached_file(r, "config.json") for r in TAESD_REPOS.values()):
        raise missing_file("--loss-decoder tiny: TAESD", TAESD_REPOS["sd"], "config.json", TAESD_FIX)
    for what, repo_id, files, fix, revision in needs:
        if not any(cached_file(repo_id, f, revision) for f in files):
            raise missing_file(what, repo_id, files[-1], fix)
