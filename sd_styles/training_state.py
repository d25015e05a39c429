"""Training checkpoints and logs: written atomically, read back without executing anything.

A checkpoint holds the learned vectors, the optimizer, learning-rate scheduler and grad-scaler states,
every RNG state (torch CPU and CUDA, Python, NumPy), the loss log and the settings that must match to
resume. The training draws themselves come from generators seeded by (seed, step) (see
`training_data`), so restoring the RNG states is belt and braces, not what makes a resume exact.
"""

from __future__ import annotations

import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write, atomic_write_text, clean_stale_temps
from .errors import BadInput

CHECKPOINT_RE = re.compile(r"^step-(\d{6,})\.pt$")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunFiles:
    """Where one output's training artefacts go: `<out>.training/` next to the output."""

    out: Path        # the final embedding file or folder

    @property
    def folder(self) -> Path:
        return self.out.with_name(self.out.name + ".training")

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def previews(self) -> Path:
        return self.folder / "previews"

    @property
    def loss_csv(self) -> Path:
        return self.folder / "loss.csv"

    @property
    def metadata(self) -> Path:
        return self.folder / "training.json"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}.pt"

    def preview(self, step: int) -> Path:
        return self.previews / f"step-{step:06d}.png"

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint with the highest step, if any."""
        if not self.checkpoints.is_dir():
            return None
        clean_stale_temps(self.checkpoints)
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
        return max(found)[1] if found else None


def rng_states() -> dict:
    """Every global RNG state as plain tensors, lists and ints (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
              "python_version": random.getstate()[0],
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what `rng_states` saved."""
    torch.set_rng_state(states["torch"])
    random.setstate((states["python_version"], tuple(states["python"]), None))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, *, step: int, vectors: torch.Tensor, optimizer, lr_scheduler, scaler,
                    losses: list[tuple[int, float, float]], settings: dict) -> Path:
    """One atomic `torch.save` of plain tensors and dicts."""
    state = {"format_version": FORMAT_VERSION, "step": step, "vectors": vectors.detach().cpu().clone(),
             "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else {}, "rng": rng_states(),
             "losses": [list(row) for row in losses], "settings": json.dumps(settings, sort_keys=True)}
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint with torch's weights-only loader (no code from the file runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to parse is a bad file
        raise BadInput(f"checkpoint {path} cannot be read ({type(err).__name__}); delete it to resume from "
                       "the one before, or start again with --overwrite") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise BadInput(f"checkpoint {path} is not an sd-styles training checkpoint of this version")
    state["settings"] = json.loads(state["settings"])
    return state


def check_resumable(saved: dict, current: dict, path: Path) -> None:
    """Settings that shape the training must equal the checkpoint's (more --steps is fine with a constant lr)."""
    free = {"steps", "preview_every", "preview_prompt", "preview_steps", "save_every", "format"}
    diff = sorted(k for k in set(saved) | set(current) if k not in free and saved.get(k) != current.get(k))
    if saved.get("steps") != current.get("steps") and current.get("lr_scheduler") != "constant":
        diff.append("steps (the learning-rate schedule depends on it)")
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" if k in saved else k for k in diff[:4])
        raise BadInput(f"cannot resume from {path}: settings differ ({shown}); use the same settings, or start "
                       "again with --overwrite")


def write_loss_csv(path: Path, losses: list[tuple[int, float, float]]) -> Path:
    """step,loss,lr: one row per optimizer step (loss averaged over the step's micro-batches)."""
    lines = ["step,loss,lr"] + [f"{s},{loss:.8g},{lr:.8g}" for s, loss, lr in losses]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_loss_csv(path: str | Path) -> list[tuple[int, float, float]]:
    """The rows `write_loss_csv` wrote."""
    rows = Path(path).read_text(encoding="utf-8").splitlines()[1:]
    return [(int(s), float(loss), float(lr)) for s, loss, lr in (r.split(",") for r in rows if r)]
