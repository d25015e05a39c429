"""Write a learned embedding as diffusers, sd-concepts or A1111 files, with the training metadata beside it.

- diffusers: `learned_embeds.safetensors`, `{token: (n, d)}`; the metadata is in the safetensors header.
- sd-concepts: a folder with `learned_embeds.bin` (`{token: (d,)}`, or `(n, d)` for several vectors),
  `token_identifier.txt`, `type_of_concept.txt` and `training.json`.
- A1111: a `.pt` dict with `string_to_token`, `string_to_param`, `name`, `step` and the metadata as a JSON string.
Pickled files hold only tensors, strings and numbers (`torch.save` of plain dicts), so weights-only
loaders read them. Every file is written atomically.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from .atomic import atomic_write, atomic_write_text
from .errors import BadInput
from .training_config import FORMATS
METADATA_KEY = "sd_styles_training"  # safetensors header key / A1111 dict key holding the metadata JSON
DIFFUSERS_NAME = "learned_embeds.safetensors"
A1111_TOKEN_ID = 265  # the id A1111 stores for its '*' placeholder; nothing reads it back


def output_path(out: str | Path, fmt: str, token: str) -> Path:
    """Where `fmt` writes for `--out`: a file for diffusers (.safetensors) and A1111 (.pt), a folder for sd-concepts."""
    out = Path(out).expanduser()
    if fmt not in FORMATS:
        raise BadInput(f"unknown --format {fmt!r}; allowed: {', '.join(FORMATS)}")
    suffix = out.suffix.lower()
    if fmt == "diffusers":
        if out.is_dir() or not suffix:
            return out / DIFFUSERS_NAME
        if suffix != ".safetensors":
            raise BadInput(f"--out {out}: the diffusers format writes .safetensors (or give a folder); "
                           "use --format a1111 for .pt, --format sd-concepts for a folder")
        return out
    if fmt == "a1111":
        if out.is_dir() or not suffix:
            return out / f"{_safe_name(token)}.pt"
        if suffix != ".pt":
            raise BadInput(f"--out {out}: the a1111 format writes a .pt file (or give a folder)")
        return out
    if out.is_file() or suffix in (".safetensors", ".pt", ".bin"):
        raise BadInput(f"--out {out}: the sd-concepts format writes a folder; give a folder name without a suffix")
    return out


def _safe_name(token: str) -> str:
    """A file name from a token: '<my-style>' -> 'my-style'."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in token).strip("-.")
    return name or "embedding"


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_embedding(path: Path, fmt: str, token: str, vectors: torch.Tensor, metadata: dict,
                    concept_type: str = "object") -> list[Path]:
    """Write (n, d) `vectors` for `token` in `fmt` at `path` (from `output_path`); returns the files written."""
    vectors = vectors.detach().float().cpu().contiguous()
    meta_json = json.dumps(metadata, sort_keys=True)
    if fmt == "diffusers":
        data = save({token: vectors}, metadata={"format": "pt", METADATA_KEY: meta_json})
        return [atomic_write(path, lambda f: f.write(data))]
    if fmt == "a1111":
        obj = {"string_to_token": {"*": A1111_TOKEN_ID}, "string_to_param": {"*": vectors}, "name": token,
               "step": int(metadata.get("step", 0)), "sd_checkpoint": None,
               "sd_checkpoint_name": str(metadata.get("model", "")), METADATA_KEY: meta_json}
        data = _torch_bytes(obj)
        return [atomic_write(path, lambda f: f.write(data))]
    # sd-concepts: the hub layout; one vector is stored 1-D like the library's files
    tensor = vectors[0] if vectors.shape[0] == 1 else vectors
    data = _torch_bytes({token: tensor})
    return [atomic_write(path / "learned_embeds.bin", lambda f: f.write(data)),
            atomic_write_text(path / "token_identifier.txt", token),
            atomic_write_text(path / "type_of_concept.txt", concept_type),
            atomic_write_text(path / "training.json", json.dumps(metadata, indent=2, sort_keys=True) + "\n")]


def read_training_metadata(path: str | Path) -> dict:
    """The training metadata stored with an output written here (any of the three formats)."""
    path = Path(path)
    if path.is_dir():
        return json.loads((path / "training.json").read_text(encoding="utf-8"))
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})[METADATA_KEY])
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return json.loads(obj[METADATA_KEY])
