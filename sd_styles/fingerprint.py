"""The execution fingerprint: what decided an image's float rounding besides its recipe.

A recipe fixes the content (model, concepts, prompt, seed, sampler, steps, cfg, size, guidance). The
same recipe on another GPU, dtype, call batch size or library version (sd-styles' own included) can round
differently, so each image also records where and how it was computed. `rerun` and resume compare
fingerprints and name the conditions that differ; they never promise a pixel bound they have not measured.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata as pkg_metadata

import numpy as np
import torch

CALL_BATCH = "call_batch_size"   # the fingerprint key that a call shape sets


@lru_cache(maxsize=None)
def _version(name: str) -> str:
    try:
        return pkg_metadata.version(name)
    except pkg_metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    """GPU name for CUDA devices, the CPU model otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name() if device.type == "cpu" else device.type


def execution_fingerprint(device: torch.device, dtype: torch.dtype, call_batch_size: int, mode: str,
                          speed: dict | None = None) -> dict:
    """Device kind and name, dtype, cells per model call, speed switches, determinism and library versions."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "device": device.type,
        "device_name": device_name(device),
        # CPU kernels split reductions by thread: 1 vs 2 threads measured 1/255 apart on the tiny model
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "dtype": str(dtype).removeprefix("torch."),
        CALL_BATCH: int(call_batch_size),
        "mode": mode,                                   # stacked | exact
        "channels_last": bool((speed or {}).get("channels_last", False)),
        "compiled": bool((speed or {}).get("compiled", False)),
        "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "sd_styles": _version("sd-styles"),   # our loop's call shapes decide rounding too (0.2.0: texts alone)
    }


def differing_conditions(recorded: dict | None, now: dict | None) -> list[str]:
    """`key: recorded -> now` for every fingerprint entry that differs (all of them when one is missing)."""
    if not recorded or not now:
        return ["no execution fingerprint recorded"] if not recorded else ["no fingerprint now"]
    keys = sorted(set(recorded) | set(now))
    return [f"{k}: {recorded.get(k)} -> {now.get(k)}" for k in keys if recorded.get(k) != now.get(k)]


def pixel_report(original, again, recorded: dict | None, now: dict | None) -> str:
    """`identical` or `differs by at most N/255 (mean M)`, then the differing conditions if any."""
    a = np.asarray(original.convert("RGB"), dtype=np.int16)
    b = np.asarray(again.convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        text = f"differs in size ({a.shape[1]}x{a.shape[0]} -> {b.shape[1]}x{b.shape[0]})"
    else:
        diff = np.abs(a - b)
        text = "identical" if not diff.any() else f"differs by at most {int(diff.max())}/255 (mean {diff.mean():.3g})"
    conditions = differing_conditions(recorded, now)
    if conditions:
        return f"{text}; differing conditions: {', '.join(conditions)}"
    return text if text == "identical" else f"{text}; differing conditions: none recorded"
