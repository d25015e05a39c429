"""Memory of the loss decode's backward through the full VAE (`--loss-decoder vae`), from measurements.

benchmarks/bench_sdxl_vae_memory.py takes one guidance gradient through an SDXL-sized VAE (the decoder of
SD 1.x, 2.x and SDXL is the same network: block_out_channels 128/256/512/512, 2 layers per block) and
records the peak of live tensor bytes beyond the weights. In fp32 the peak is proportional to the output's
pixel count, to four digits: 5947.6, 5947.3 and 5947.2 values per output pixel at 64, 128 and 192 px
without checkpointing, 3286 / 3258 / 3255 with it. A bf16 decode peaked at 0.575x the fp32 bytes (0.593x
with checkpointing; 64 px), not 0.5x: some tensors stay fp32. So, per 1024x1024 image (benchmarks/RESULTS.md,
"SDXL"):

    fp32: 23.2 GiB (checkpointing: 12.9)   bf16 / fp16: 13.4 GiB (checkpointing: 7.6)

Next to the SDXL UNet a 16 GB GPU fits only the checkpointed 2-byte decode; everything else should be
refused before sampling starts, with `--loss-decoder tiny` (TAESDXL) as the way out. The attention of
the decoder's mid-block is assumed memory-efficient (flash / memory-efficient SDPA, as on the CPU where
this was measured); its math fallback would add about 2 x (h/8 * w/8)^2 values (2 GiB in fp32 at 1024x1024).
"""

from __future__ import annotations

import torch

from .decoders import loss_decode_dtype

GIB = 1024**3
HALF_RATIO = {False: 0.575, True: 0.593}  # bf16 peak / fp32 peak at 64x64, by gradient checkpointing (measured)
# peak bytes per output pixel, forward + backward, by (bytes per value, gradient checkpointing)
BYTES_PER_PIXEL = {(4, False): 5948 * 4, (4, True): 3290 * 4,
                   (2, False): 5948 * 4 * HALF_RATIO[False], (2, True): 3290 * 4 * HALF_RATIO[True]}
MEASURED_CHANNELS = (128, 256, 512, 512)   # the decoder measured; others are scaled (see _scale)
MEASURED_LAYERS = 2


def _scale(vae_config) -> float:
    """1 for the measured decoder; for another, a rough ratio from its full-resolution level, which dominates.

    That level keeps its (layers + 1) resnets and the output layers' tensors, all at full resolution
    (on the 32/64-channel, 1-layer decoder of the tests it predicts within 10% of a measurement).
    """
    channels = tuple(getattr(vae_config, "block_out_channels", MEASURED_CHANNELS))
    layers = getattr(vae_config, "layers_per_block", MEASURED_LAYERS)
    if channels == MEASURED_CHANNELS and layers == MEASURED_LAYERS:
        return 1.0
    return channels[0] * (layers + 2) / (MEASURED_CHANNELS[0] * (MEASURED_LAYERS + 2))


def vae_backward_bytes(vae_config, width: int, height: int, dtype: torch.dtype, checkpoint: bool,
                       images: int = 1) -> int:
    """Peak bytes beyond the weights of the loss decode (forward + backward) of `images` at width x height."""
    size = 4 if torch.empty((), dtype=dtype).element_size() >= 4 else 2
    return int(BYTES_PER_PIXEL[size, bool(checkpoint)] * _scale(vae_config) * width * height * images)


def vae_guidance_bytes(model, width: int, height: int, images: int = 1, checkpoint: bool | None = None) -> int:
    """`vae_backward_bytes` for `model` as `decoders.make_decoder` will run it (dtype and checkpointing)."""
    vae = model.pipe.vae
    if checkpoint is None:
        checkpoint = model.device.type != "cpu"  # make_decoder's default
    return vae_backward_bytes(vae.config, width, height, loss_decode_dtype(vae), checkpoint, images)
