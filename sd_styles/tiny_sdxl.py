"""The built-in `tiny-sdxl` base and `tiny-sdxl-refiner`: random SDXL-shaped weights built in code.

Like `tiny` for SD 1.x they exist for demos, tests and offline runs, and go through the same
save / `from_pretrained` path as hub models. The base has two text encoders (32 and 64 wide, so its
UNet cross-attends to 96-wide tokens) and the `text_time` micro-conditioning; the refiner, like
`stabilityai/stable-diffusion-xl-refiner-1.0`, has only `text_encoder_2`, aesthetic-score time ids and
`force_zeros_for_empty_prompt: false`. Both build `text_encoder_2`, `tokenizer_2` and the VAE from
the same seeds, so their weight files are identical and the refiner shares them with the base.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .tiny import write_byte_tokenizer

TINY_SDXL_ID = "tiny-sdxl"
TINY_SDXL_REFINER_ID = "tiny-sdxl-refiner"
TINY_SDXL_VERSION = 1   # bump when the architecture or seeds change: it is part of every tiny-sdxl recipe
WIDTH_1, WIDTH_2 = 32, 64   # text encoder widths (real SDXL: 768 and 1280)
TIME_EMBED_DIM = 8          # addition_time_embed_dim (real SDXL: 256)

# stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json (fixture configs/...)
SDXL_SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "clip_sample": False, "interpolation_type": "linear", "prediction_type": "epsilon", "sample_max_value": 1.0,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False,
}


def _text_config(tokenizer: CLIPTokenizer, width: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=width, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=5, vocab_size=len(tokenizer), max_position_embeddings=77,
        projection_dim=width, hidden_act=act,
    )


def _unet(cross_dim: int, n_time_ids: int, seed: int) -> UNet2DConditionModel:
    """A two-level text_time UNet (64x64 native with the 2x VAE below)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=n_time_ids * TIME_EMBED_DIM + WIDTH_2,
        cross_attention_dim=cross_dim, norm_num_groups=32,
    )


def _shared_parts(folder: Path, seed: int) -> dict:
    """text_encoder_2 + tokenizer_2 + VAE + scheduler: the same for base and refiner."""
    tokenizer_2 = write_byte_tokenizer(folder / "tokenizer_2", pad_token="!")  # as SDXL's OpenCLIP tokenizer
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, WIDTH_2, "gelu"))
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4, sample_size=64, scaling_factor=0.13025, force_upcast=True,  # SDXL's VAE config
    )
    return {"text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2, "vae": vae,
            "scheduler": EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)}


def save_tiny_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny SDXL base as a diffusers folder (loadable with `--model FOLDER`)."""
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):  # never disturb the caller's global RNG
        parts = _shared_parts(folder, seed)
        tokenizer = write_byte_tokenizer(folder / "tokenizer")
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(_text_config(tokenizer, WIDTH_1, "quick_gelu"))
        unet = _unet(WIDTH_1 + WIDTH_2, 6, seed)  # 6 time ids: original size, crop, target size
    pipe = StableDiffusionXLPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, **parts,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(folder)
    return folder


def save_tiny_sdxl_refiner(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny SDXL refiner (text_encoder_2 only, aesthetic score) as a diffusers folder."""
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        parts = _shared_parts(folder, seed)
        unet = _unet(WIDTH_2, 5, seed + 2)  # 5 time ids: original size, crop, aesthetic score
    pipe = StableDiffusionXLImg2ImgPipeline(unet=unet, text_encoder=None, tokenizer=None, **parts,
                                            requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
                                            add_watermarker=False)
    pipe.save_pretrained(folder)
    return folder


TINY_SDXL_BUILDERS = {TINY_SDXL_ID: save_tiny_sdxl, TINY_SDXL_REFINER_ID: save_tiny_sdxl_refiner}


def build_tiny_sdxl(name: str):
    """(pipeline, digests of its shareable weight files) of a built-in tiny SDXL model."""
    from .refiner import SHAREABLE, folder_digest
    from .models import pipeline_class

    with tempfile.TemporaryDirectory(prefix="sd-styles-tiny-sdxl-") as tmp:
        folder = TINY_SDXL_BUILDERS[name](Path(tmp) / name)
        digests = {part: folder_digest(folder / part) for part in SHAREABLE}
        pipe = pipeline_class(folder).from_pretrained(folder, add_watermarker=False)
    return pipe, digests
