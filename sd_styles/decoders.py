"""Image decoders for loss guidance: raw latents (N, 4, h, w) -> (N, 3, H, W) in [0, 1], differentiable."""

from __future__ import annotations

from typing import Callable

import torch

from .errors import BadInput
from .sampling import decode

Decoder = Callable[[torch.Tensor], torch.Tensor]


def vae_decoder(model) -> Decoder:
    """The model's own VAE: faithful, ~3x a UNet step forward+backward."""
    vae = model.pipe.vae
    return lambda latents: decode(vae, latents).float()


def make_decoder(model, name: str) -> Decoder:
    if name == "vae":
        return vae_decoder(model)
    raise BadInput(f"unknown loss decoder {name!r}; allowed: vae")


def check_decoder(name: str) -> str:
    """Validate a decoder name early (before any weights load)."""
    if name == "vae":
        return name
    raise BadInput(f"unknown loss decoder {name!r}; allowed: vae")
