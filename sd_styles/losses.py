"""Built-in creative losses: small functions on (N, 3, H, W) images in [0, 1] returning a scalar."""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from .errors import BadInput
from .recipe import LossTerm

Loss = Callable[[torch.Tensor], torch.Tensor]


def blue_loss(images: torch.Tensor) -> torch.Tensor:
    """The classic reference: mean |blue - 0.9|, pulling the blue channel toward 0.9."""
    return (images[:, 2] - 0.9).abs().mean()


BUILTIN_LOSSES: dict[str, Loss] = {
    "blue": blue_loss,
}


def resolve_loss(term: LossTerm) -> Loss:
    """The callable behind a loss term: its own `fn`, a built-in name, or an importable module:function."""
    if term.fn is not None:
        return term.fn
    if term.name in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[term.name]
    if ":" in term.name:
        module, _, attr = term.name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise BadInput(f"loss {term.name!r}: cannot import it ({err})") from err
        if not callable(fn):
            raise BadInput(f"loss {term.name!r} is not callable")
        return fn
    raise BadInput(f"unknown loss {term.name!r}; built-in: {', '.join(BUILTIN_LOSSES)}, or module:function")


def parse_loss_spec(spec: str, default_scale: float = 100.0) -> LossTerm:
    """'NAME[:SCALE]' -> LossTerm; NAME may itself be 'module:function'."""
    name, _, last = spec.rpartition(":")
    try:
        scale = float(last) if name else None
    except ValueError:
        scale = None
    if scale is None:
        name, scale = spec, default_scale
    if not name:
        raise BadInput(f"--loss {spec!r}: expected NAME[:SCALE]")
    if scale != scale or scale in (float("inf"), float("-inf")):
        raise BadInput(f"--loss {spec!r}: scale must be a finite number")
    return LossTerm(name=name, scale=scale)
