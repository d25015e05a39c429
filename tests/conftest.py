"""Shared fixtures: tiny random models built once per session and saved to a temporary folder.

Tests never touch the hub (HF_HUB_OFFLINE=1) and never need a GPU. Real files from ../shared/fixtures
are read in place; tests that need them skip with a reason when that folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """../shared/fixtures (real embeddings, tokenizers, configs, PNGs); skip where it is absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"real-file fixtures not found at {SHARED_FIXTURES} (only in the project's CI checkout)")
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The built-in tiny model (byte tokenizer, 32-wide text encoder) saved as a diffusers folder."""
    from sd_styles.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """The tiny model loaded through `--model PATH`'s code path, on the CPU in fp32.

    Shared by many tests: a test that adds concepts must remove them again (or use its own model).
    """
    from sd_styles.models import load_model

    return load_model(str(tiny_dir), device="cpu", dtype="fp32")


def _real_tokenizer_model(tmp_path_factory, shared: Path, config: str, width: int) -> Path:
    from sd_styles.tiny import save_tiny_model

    folder = tmp_path_factory.mktemp("models") / f"tiny-{config}-{width}"
    return save_tiny_model(folder, tokenizer_dir=shared / "configs" / config / "tokenizer", hidden_size=width)


@pytest.fixture(scope="session")
def tiny_sd1_dir(tmp_path_factory, shared_fixtures) -> Path:
    """Tiny random UNet/VAE with the real SD 1.5 CLIP tokenizer and a 768-wide text encoder."""
    return _real_tokenizer_model(tmp_path_factory, shared_fixtures, "stable-diffusion-v1-5", 768)


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory, shared_fixtures) -> Path:
    """Tiny random UNet/VAE with the real SD 2.1 CLIP tokenizer and a 1024-wide text encoder."""
    return _real_tokenizer_model(tmp_path_factory, shared_fixtures, "stable-diffusion-2-1-base", 1024)



@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """The built-in tiny SDXL base (two byte-level encoders, 32 + 64 wide) saved as a diffusers folder."""
    from sd_styles.tiny_sdxl import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner_dir(tmp_path_factory) -> Path:
    """The built-in tiny SDXL refiner (text_encoder_2 only, aesthetic score) saved as a diffusers folder."""
    from sd_styles.tiny_sdxl import save_tiny_sdxl_refiner

    return save_tiny_sdxl_refiner(tmp_path_factory.mktemp("models") / "tiny-sdxl-refiner")


@pytest.fixture(scope="session")
def tiny_sdxl_model(tiny_sdxl_dir, tiny_sdxl_refiner_dir):
    """Tiny SDXL base with its refiner attached, loaded through the `--model PATH --refiner PATH` code path."""
    from sd_styles.models import load_model

    return load_model(str(tiny_sdxl_dir), device="cpu", dtype="fp32", refiner=str(tiny_sdxl_refiner_dir))
