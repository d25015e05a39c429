"""The allowed ranges of the settings every entry point takes (API, experiment files, command line), in one place.

Each check returns the value or raises BadInput whose message names the setting as the caller calls it
(`seed`, `styles[1].seed`, `--seeds`), so the same rule reads the same way everywhere.
"""

from __future__ import annotations

import math

from .errors import BadInput

MAX_SEED = 2**63 - 1        # torch.Generator.manual_seed takes a signed 64-bit int
MAX_STEPS = 1000            # the schedulers' training timesteps
SIZE_MULTIPLE = 8           # the VAE downsamples by 8


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_seed(value: object, name: str = "seed") -> int:
    """An integer from 0 to 2**63-1."""
    if not _is_int(value) or not 0 <= value <= MAX_SEED:  # type: ignore[operator]
        raise BadInput(f"{name} must be an integer from 0 to 2**63-1, got {value!r}")
    return value  # type: ignore[return-value]


def check_steps(value: object, name: str = "steps") -> int:
    """An integer from 1 to 1000."""
    if not _is_int(value) or not 1 <= value <= MAX_STEPS:  # type: ignore[operator]
        raise BadInput(f"{name} must be an integer from 1 to {MAX_STEPS}, got {value!r}")
    return value  # type: ignore[return-value]


def check_side(value: object, name: str = "width") -> int:
    """A positive multiple of 8 (image width or height)."""
    if not _is_int(value) or value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:  # type: ignore[operator]
        raise BadInput(f"{name} must be a positive multiple of {SIZE_MULTIPLE}, got {value!r}")
    return value  # type: ignore[return-value]


def check_cfg(value: object, name: str = "cfg") -> float:
    """A finite number >= 0 (classifier-free guidance scale; <= 1 disables the unconditional pass)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise BadInput(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)
