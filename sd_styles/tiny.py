"""The built-in `tiny` model: random weights built in code, seconds on a CPU.

It exists for demos, tests and offline runs. Its pictures look like coloured noise: the weights are
random, only the plumbing is real. Everything is deterministic (fixed seeds, no global RNG touched),
and the components are saved and loaded through `from_pretrained` exactly like a hub model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_ID = "tiny"
TINY_VERSION = 1  # bump when the architecture or seeds change: it is part of every tiny recipe


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode map (the base alphabet of CLIP's BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_byte_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIP BPE tokenizer with the byte alphabet and no merges: every character is one token.

    `pad_token`: SDXL's second tokenizer pads with "!" instead of "<|endoftext|>".
    """
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                        pad_token=pad_token)
    tok.save_pretrained(folder)
    return tok


def tiny_components(tokenizer: CLIPTokenizer, hidden_size: int = 32, seed: int = 0) -> dict:
    """Random UNet / VAE / CLIP text encoder as small as diffusers' own tests use; native size 64x64."""
    with torch.random.fork_rng(devices=[]):  # never disturb the caller's global RNG
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=hidden_size, norm_num_groups=32,
        )
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            block_out_channels=[32, 64], in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4, sample_size=64,
        )
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, hidden_size=hidden_size, intermediate_size=37,
            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, vocab_size=len(tokenizer),
            max_position_embeddings=77, projection_dim=hidden_size,
        ))
    # SD 1.x's own scheduler config (CompVis/stable-diffusion-v1-4, scheduler/scheduler_config.json);
    # from_config keeps `clip_sample: false`, which DDIM inherits when it is configured from this one.
    scheduler = PNDMScheduler.from_config({
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1, "trained_betas": None,
        "clip_sample": False,
    })
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler, "safety_checker": None, "feature_extractor": None}


def save_tiny_model(folder: str | Path, tokenizer_dir: str | Path | None = None, hidden_size: int = 32) -> Path:
    """Write the tiny model as a diffusers folder (loadable with `--model FOLDER`).

    `tokenizer_dir` swaps in another CLIP tokenizer (e.g. the real one) instead of the byte tokenizer;
    `hidden_size` sets the text-encoder width (768 / 1024 to load real SD 1.x / 2.x embeddings).
    """
    folder = Path(folder)
    if tokenizer_dir is None:
        tokenizer = write_byte_tokenizer(folder / "tokenizer")
    else:
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    pipe = StableDiffusionPipeline(**tiny_components(tokenizer, hidden_size=hidden_size), requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_pipeline() -> StableDiffusionPipeline:
    """The `tiny` model as a pipeline, built through the same save/`from_pretrained` path as hub models."""
    with tempfile.TemporaryDirectory(prefix="sd-styles-tiny-") as tmp:
        folder = save_tiny_model(Path(tmp) / "tiny")
        return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
