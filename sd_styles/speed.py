"""Opt-in speed switches: channels_last memory format of the UNet, torch.compile of the UNet and the loss decode.

Attention already runs through PyTorch's scaled_dot_product_attention (diffusers' default
AttnProcessor2_0) on every device. Both switches change kernels, hence float rounding: the execution
fingerprint records them (`channels_last`, `compiled`). Measured gains: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import logging

import torch
from diffusers.utils.torch_utils import is_compiled_module

log = logging.getLogger(__name__)


def uses_channels_last(unet) -> bool:
    """Whether the UNet's first convolution holds channels_last weights."""
    weight = unet.conv_in.weight
    return weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def optimize(model, *, channels_last: bool = False, compile: bool = False) -> dict:
    """Apply the chosen switches to `model`'s UNet once (idempotent); returns the state for the fingerprint.

    `compile` also compiles the loss decoders built from then on on accelerators (`compiles_loss_decode`).
    """
    pipe = model.pipe
    if compile and model.device.type == "cpu" and not is_compiled_module(pipe.unet):
        log.warning("--compile on the CPU: measured slower than eager there (0.78x eager speed after a ~2 min "
                    "compile of an SD 1.5 UNet, benchmarks/RESULTS.md); it is meant for GPUs")
    if channels_last and not uses_channels_last(pipe.unet):
        pipe.unet.to(memory_format=torch.channels_last)
    if compile and not is_compiled_module(pipe.unet):
        pipe.unet = torch.compile(pipe.unet)   # compiled on the first call of each shape (minutes on a CPU)
    return speed_state(model)


def speed_state(model) -> dict:
    """{"channels_last": bool, "compiled": bool} of the model's UNet."""
    unet = model.pipe.unet
    return {"channels_last": uses_channels_last(unet), "compiled": is_compiled_module(unet)}


def compiles_loss_decode(model) -> bool:
    """Whether `decoders.make_decoder` compiles the loss decode: once the UNet is compiled, off the CPU only.

    On a 2-core CPU the compiled SD 1.5 VAE forward + backward took 1.6x its eager time and TAESD gained
    nothing (benchmarks/RESULTS.md, "`--compile` on a quiet CPU"), so the CPU keeps the eager decode.
    """
    return model.device.type != "cpu" and speed_state(model)["compiled"]
