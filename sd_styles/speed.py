"""Opt-in speed switches for the UNet: channels_last memory format and torch.compile.

Attention already runs through PyTorch's scaled_dot_product_attention (diffusers' default
AttnProcessor2_0) on every device. Both switches change kernels, hence float rounding: the execution
fingerprint records them (`channels_last`, `compiled`). Measured gains: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import is_compiled_module


def uses_channels_last(unet) -> bool:
    """Whether the UNet's first convolution holds channels_last weights."""
    weight = unet.conv_in.weight
    return weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def optimize(model, *, channels_last: bool = False, compile: bool = False) -> dict:
    """Apply the chosen switches to `model`'s UNet once (idempotent); returns the state for the fingerprint."""
    pipe = model.pipe
    if channels_last and not uses_channels_last(pipe.unet):
        pipe.unet.to(memory_format=torch.channels_last)
    if compile and not is_compiled_module(pipe.unet):
        pipe.unet = torch.compile(pipe.unet)   # compiled on the first call of each shape (minutes on a CPU)
    return speed_state(model)


def speed_state(model) -> dict:
    """{"channels_last": bool, "compiled": bool} of the model's UNet."""
    unet = model.pipe.unet
    return {"channels_last": uses_channels_last(unet), "compiled": is_compiled_module(unet)}
