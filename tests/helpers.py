"""Small helpers shared by tests (import as `from helpers import ...`)."""

from __future__ import annotations

import numpy as np


def pixel_diff(a, b) -> int:
    """Largest per-channel difference between two PIL images, in 1/255 units."""
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def build_tiny_scorers(root):
    """A tiny random CLIP (with its processor) and a tiny random DINO-style ViT saved under `root`: (clip, dino)."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, ViTConfig, ViTImageProcessor,
                              ViTModel)

    from sd_styles.tiny import write_byte_tokenizer

    tokenizer = write_byte_tokenizer(root / "tok")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = CLIPModel(CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                               image_size=30, patch_size=6),
            projection_dim=16))
        torch.manual_seed(1)
        vit = ViTModel(ViTConfig(hidden_size=24, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                 image_size=32, patch_size=8), add_pooling_layer=False)
    clip.save_pretrained(root / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}),
                  tokenizer=tokenizer).save_pretrained(root / "clip")
    vit.save_pretrained(root / "dino")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "dino")
    return root / "clip", root / "dino"
