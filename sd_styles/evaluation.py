"""Score generated images against reference pictures: CLIP-I, CLIP-T and DINO, DreamBench's protocol.

- CLIP-I: mean cosine similarity over all (generated, reference) pairs of L2-normalised CLIP image
  projections.
- CLIP-T: mean cosine similarity between each generated image and the prompt with the placeholder
  token removed, as the textual-inversion paper does ("a photo of S* on the beach" is scored as
  "a photo of on the beach"); `replace_with` puts a word in its place instead (DreamBench-style class noun).
- DINO: mean cosine similarity over all (generated, reference) pairs of DINO ViT-S/16 CLS features.
All raw cosines: no x100, no 2.5 weight (CLIPScore's), so they compare with DreamBench's tables.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .errors import BadInput
from .training_data import read_image_folder

DEFAULT_CLIP = "openai/clip-vit-base-patch32"   # the textual-inversion paper's ViT-B/32
DEFAULT_DINO = "facebook/dino-vits16"           # DreamBench's DINO ViT-S/16
PLACEHOLDER_RE = re.compile(r"<[^<>\s]+>")      # sd-concepts style tokens such as <cat-toy>
CHUNK = 32                                      # images per forward pass


def clip_t_text(prompt: str, token: str | None = None, replace_with: str | None = None) -> str:
    """The prompt CLIP-T scores: `token` (default: every <...> word) removed, or replaced by `replace_with`."""
    pattern = re.compile(re.escape(token) + r"(_\d+)?") if token else PLACEHOLDER_RE
    text = pattern.sub(replace_with or "", prompt)
    return " ".join(text.split())


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cuda", "cpu"):
        raise BadInput(f"unknown device {device!r}; allowed: auto, cuda, cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda asked for, but torch sees no CUDA GPU; use --device auto or cpu")
    return torch.device(device)


def _load(kind: str, source: str, what: str):
    """A CLIP (kind='clip') or ViT (kind='vit') model and its processor from a hub id or a local folder."""
    from transformers import AutoConfig, AutoImageProcessor, CLIPModel, CLIPProcessor, ViTModel

    local = Path(source).expanduser()
    if local.exists():
        source = str(local)
    elif source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise BadInput(f"{what} {source}: no such folder; give a hub id (org/name) or a local model folder")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BadInput(f"{what} {source}: cannot load it ({first[:160]}); it is not cached and the hub may be "
                       "unreachable: give a local model folder") from err
    if config.model_type != kind:
        raise BadInput(f"{what} {source} is a {config.model_type!r} model; expected a {kind!r} model "
                       f"(e.g. {DEFAULT_CLIP if kind == 'clip' else DEFAULT_DINO})")
    if kind == "clip":
        return CLIPModel.from_pretrained(source).eval(), CLIPProcessor.from_pretrained(source)
    return ViTModel.from_pretrained(source, add_pooling_layer=False).eval(), AutoImageProcessor.from_pretrained(source)


def _features(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


@torch.no_grad()
def clip_image_features(model, processor, images, device) -> torch.Tensor:
    """(N, p) L2-normalised CLIP image projections."""
    feats = []
    for k in range(0, len(images), CHUNK):
        pixels = processor(images=images[k:k + CHUNK], return_tensors="pt").pixel_values.to(device)
        feats.append(_features(model.get_image_features(pixel_values=pixels)))
    return _normalise(torch.cat(feats))


@torch.no_grad()
def clip_text_features(model, processor, text: str, device) -> torch.Tensor:
    """(1, p) L2-normalised CLIP text projection."""
    enc = processor(text=[text], padding=True, truncation=True, return_tensors="pt")
    out = model.get_text_features(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device))
    return _normalise(_features(out))


@torch.no_grad()
def dino_features(model, processor, images, device) -> torch.Tensor:
    """(N, 384) L2-normalised DINO CLS features (last hidden state, token 0)."""
    feats = []
    for k in range(0, len(images), CHUNK):
        pixels = processor(images=images[k:k + CHUNK], return_tensors="pt").pixel_values.to(device)
        feats.append(model(pixel_values=pixels).last_hidden_state[:, 0])
    return _normalise(torch.cat(feats))


def evaluate(images: str | Path, reference: str | Path, prompt: str, *, clip: str = DEFAULT_CLIP,
             dino: str | None = DEFAULT_DINO, token: str | None = None, replace_with: str | None = None,
             device: str = "auto") -> dict:
    """CLIP-I, CLIP-T and DINO of the generated `images` folder against the `reference` folder, as a dict."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadInput("--prompt must be the text the images were generated from")
    text = clip_t_text(prompt, token, replace_with)
    if not text:
        raise BadInput(f"--prompt {prompt!r} is only the placeholder; CLIP-T needs the rest of the prompt")
    gen = [f.image for f in read_image_folder(images, "--images")]
    ref = [f.image for f in read_image_folder(reference, "--reference")]
    if Path(images).expanduser().resolve() == Path(reference).expanduser().resolve():
        raise BadInput("--images and --reference are the same folder; score generated images against the "
                       "training pictures")
    dev = _device(device)
    clip_model, clip_proc = _load("clip", clip, "--clip")
    dino_loaded = _load("vit", dino, "--dino") if dino else None
    clip_model.to(dev)
    g, r = clip_image_features(clip_model, clip_proc, gen, dev), clip_image_features(clip_model, clip_proc, ref, dev)
    t = clip_text_features(clip_model, clip_proc, text, dev)
    result = {"clip_i": float((g @ r.T).mean()), "clip_t": float((g @ t.T).mean()), "dino": None,
              "clip_model": clip, "dino_model": dino, "n_images": len(gen), "n_reference": len(ref),
              "prompt": prompt, "clip_t_prompt": text}
    if dino_loaded is not None:
        dino_model, dino_proc = dino_loaded
        dino_model.to(dev)
        dg, dr = dino_features(dino_model, dino_proc, gen, dev), dino_features(dino_model, dino_proc, ref, dev)
        result["dino"] = float((dg @ dr.T).mean())
    how = f"replaced by {replace_with!r}" if replace_with else "removed (textual-inversion paper)"
    result["protocol"] = {
        "clip_i": "mean cosine over all generated x reference pairs of L2-normalised CLIP image projections",
        "clip_t": f"mean cosine between each generated image and the prompt, placeholder {how}",
        "dino": "mean cosine over all generated x reference pairs of DINO ViT CLS features (DreamBench)",
        "scale": "raw cosine similarity: no x100, no 2.5 weight",
    }
    return result
