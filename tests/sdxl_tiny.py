"""Tiny SDXL components for tests: the real SDXL tokenizers and encoder configs, shrunk, with random weights.

Shapes follow diffusers' own `tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py`
(`get_dummy_components`), except that the two text encoders keep SDXL's real widths (768 for CLIP ViT-L,
1280 for OpenCLIP bigG) and real vocabularies, so real SDXL embedding files load into them. Two layers
each instead of 12 / 32. Import as `from sdxl_tiny import ...`.
"""

from __future__ import annotations

from pathlib import Path

import torch

SDXL_CONFIG = "stable-diffusion-xl-base-1.0"
TIME_DIM = 8  # addition_time_embed_dim: 6 ids x 8 + 1280 pooled = projection_class_embeddings_input_dim


def _text_encoder(config_dir: Path, with_projection: bool):
    """The real SDXL encoder config (widths, activations, token ids) with 2 layers and a small MLP."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig.from_pretrained(config_dir)
    config.num_hidden_layers, config.intermediate_size, config.num_attention_heads = 2, 37, 4
    config.dtype = torch.float32  # the real config says float16, which from_pretrained would load the weights in
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_sdxl_vae(latents_mean=None, latents_std=None):
    """A 2-block AutoencoderKL with SDXL's scaling factor and force_upcast (and optional latents_mean/std)."""
    from diffusers import AutoencoderKL

    extra = {} if latents_mean is None else {"latents_mean": list(latents_mean), "latents_std": list(latents_std)}
    return AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         sample_size=128, scaling_factor=0.13025, force_upcast=True, **extra)


def tiny_sdxl_components(shared: Path, seed: int = 0, vae=None) -> dict:
    """Components of a StableDiffusionXLPipeline: tiny UNet / VAE, the real SDXL tokenizers, 768 + 1280 encoders."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    root = shared / "configs" / SDXL_CONFIG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=TIME_DIM, transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=6 * TIME_DIM + 1280, cross_attention_dim=768 + 1280,
            norm_num_groups=32)
        torch.manual_seed(seed)
        vae = vae if vae is not None else tiny_sdxl_vae()
        torch.manual_seed(seed)
        text_encoder = _text_encoder(root / "text_encoder", with_projection=False)
        torch.manual_seed(seed)
        text_encoder_2 = _text_encoder(root / "text_encoder_2", with_projection=True)
    scheduler = EulerDiscreteScheduler.from_pretrained(root / "scheduler")
    return {"unet": unet, "vae": vae, "scheduler": scheduler, "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2, "tokenizer": CLIPTokenizer.from_pretrained(root / "tokenizer"),
            "tokenizer_2": CLIPTokenizer.from_pretrained(root / "tokenizer_2")}


def save_tiny_sdxl(folder: Path, shared: Path) -> Path:
    """The tiny SDXL base saved as a diffusers folder (model_index.json + one folder per component)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(shared), add_watermarker=False)
    pipe.save_pretrained(folder)
    return folder


def load_tiny_sdxl(folder: Path):
    """The saved tiny SDXL base through from_pretrained, fp32 on the CPU, watermark off (reference pixels)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_style_model(pipe, source: str = "tiny-sdxl-test"):
    """Wrap a diffusers SDXL pipeline as our StyleModel (CPU, fp32) without the model loader."""
    from sd_styles.models import StyleModel

    return StyleModel(pipe=pipe, source=source, revision=None, device=torch.device("cpu"), dtype=torch.float32,
                      vae_dtype=torch.float32, family="sdxl")
