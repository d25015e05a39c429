"""Prompt conditioning per model family: the one place that knows how each family encodes text.

`encode_conditioning` returns what the UNet is called with for one chunk of cells, so the denoising
loop stays one loop for every family. SD 1.x: the text encoder's last hidden state. SDXL (base and
refiner) reproduces diffusers' `StableDiffusionXLPipeline.encode_prompt` / `_get_add_time_ids` and
`StableDiffusionXLImg2ImgPipeline._get_add_time_ids` (diffusers 0.42.1, pipeline_stable_diffusion_xl.py
L368-L429 and L731-L745; pipeline_stable_diffusion_xl_img2img.py L845-L889):
- token embeddings from `hidden_states[-2]` of every encoder (penultimate layer, no final layer norm),
  concatenated on the last dimension (768 + 1280 = 2048 for SDXL base, 1280 for the refiner);
- the pooled embedding is `text_encoder_2`'s projected `text_embeds`, its output[0];
- a negative prompt of None gives zero embeddings when `force_zeros_for_empty_prompt` (the base), while
  "" is encoded as text; each tokenizer pads with its own pad token ("!" for tokenizer_2);
- micro-conditioning time ids: (h, w, 0, 0, h, w) for the base; (h, w, 0, 0, 6.0) and negative
  (h, w, 0, 0, 2.5) when the model `requires_aesthetics_score` (the refiner);
- classifier-free guidance stacks negatives first: [negatives; prompts].

Every distinct text is encoded once, alone (a batch of one), and its rows are repeated for the cells
that share it. Alone, a text's embedding depends on nothing but the text (never on which cells share
the call, nor where), and a grid of one prompt costs two encoder calls, not 2n: diffusers encodes a
single cell's prompt and negative alone too, and repeats one encoding for `num_images_per_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import BadInput

AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5   # diffusers' defaults (img2img L1011-1012)


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on for one chunk of n cells ([negatives; prompts] with CFG)."""

    embeds: torch.Tensor                             # (2n or n, 77, d) token embeddings
    added: dict[str, torch.Tensor] | None = None     # SDXL: text_embeds (2n|n, p) and time_ids (2n|n, 5|6)

    @property
    def rows(self) -> int:
        """Rows of the UNet batch (2n with CFG)."""
        return self.embeds.shape[0]

    def unet_kwargs(self) -> dict:
        """Keyword arguments of `UNet2DConditionModel.__call__` besides the sample and the timestep."""
        return {"encoder_hidden_states": self.embeds, "added_cond_kwargs": self.added}


def encode_conditioning(model, prompts: Sequence[str], negatives: Sequence[str | None], do_cfg: bool,
                        width: int, height: int) -> Conditioning:
    """Encode one chunk of cells for `model` (a StyleModel) in its family's way."""
    return _ENCODERS[model.family](model.pipe, list(prompts), list(negatives), do_cfg, model.device, width, height)


def each_distinct(texts: Sequence[str], encode: Callable[[str], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """`encode(text)` (tensors of one row each) once per distinct text, the rows gathered back in `texts` order."""
    encoded = {text: encode(text) for text in dict.fromkeys(texts)}
    return tuple(torch.cat(rows) for rows in zip(*(encoded[text] for text in texts)))


def _tokens(pipe, tokenizer, text: str):
    """One text's (1, 77) input_ids and attention_mask, multi-vector concepts expanded ("<t>" -> "<t> <t>_1 ...")."""
    converted = pipe.maybe_convert_prompt([text], tokenizer)
    return tokenizer(converted, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt")


def _encode_sd1(pipe, prompts, negatives, do_cfg, device, width, height) -> Conditioning:
    """SD 1.x / 2.x: the text encoder's last hidden state; no negative and an empty negative are both ""."""
    te = pipe.text_encoder
    use_mask = getattr(te.config, "use_attention_mask", False)

    def encode(text: str) -> tuple[torch.Tensor]:
        tokens = _tokens(pipe, pipe.tokenizer, text)
        mask = tokens.attention_mask.to(device) if use_mask else None
        with torch.no_grad():
            return (te(tokens.input_ids.to(device), attention_mask=mask)[0],)   # (1, 77, d)

    texts = ([n or "" for n in negatives] + list(prompts)) if do_cfg else list(prompts)
    (embeds,) = each_distinct(texts, encode)
    return Conditioning(embeds.to(dtype=te.dtype, device=device))


def _text_encoders(pipe) -> list[tuple]:
    """(tokenizer, encoder) pairs in SDXL's order; the refiner has only the second."""
    pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    return [(tok, enc) for tok, enc in pairs if tok is not None and enc is not None]


def _encode_texts(pipe, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(token embeddings (n, 77, d1 + d2), pooled (n, p)) of `texts` through every encoder."""

    def encode(text: str) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], None
        for tokenizer, encoder in _text_encoders(pipe):
            with torch.no_grad():
                out = encoder(_tokens(pipe, tokenizer, text).input_ids.to(device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # text_encoder_2's projected text_embeds (diffusers' test)
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        return torch.cat(hidden, dim=-1), pooled

    return each_distinct(texts, encode)


def _time_ids(pipe, width: int, height: int, negative: bool) -> tuple[float, ...]:
    """Micro-conditioning: original size + crop + target size, or + aesthetic score for the refiner."""
    size = (height, width)
    if getattr(pipe.config, "requires_aesthetics_score", False):
        return size + (0, 0) + (NEGATIVE_AESTHETIC_SCORE if negative else AESTHETIC_SCORE,)
    return size + (0, 0) + size


def _check_time_ids(pipe, n_ids: int, projection_dim: int) -> None:
    """The UNet's add_embedding must take exactly the ids we build (else the model's config is off)."""
    expected = pipe.unet.add_embedding.linear_1.in_features
    passed = pipe.unet.config.addition_time_embed_dim * n_ids + projection_dim
    if passed != expected:
        flag = "true" if n_ids == 6 else "false"
        raise BadInput(f"this SDXL model's UNet expects {expected} micro-conditioning inputs but {passed} were built; "
                       f"its model_index.json probably needs requires_aesthetics_score: {flag}")


def _encode_sdxl(pipe, prompts, negatives, do_cfg, device, width, height) -> Conditioning:
    """SDXL base or refiner, as StableDiffusionXL(Img2Img)Pipeline builds its UNet inputs."""
    embeds, pooled = _encode_texts(pipe, prompts, device)
    dtype = pipe.text_encoder_2.dtype if pipe.text_encoder_2 is not None else pipe.unet.dtype
    projection_dim = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else pooled.shape[-1]
    pos_ids = _time_ids(pipe, width, height, negative=False)
    _check_time_ids(pipe, len(pos_ids), projection_dim)
    n = len(prompts)
    time_ids = torch.tensor([pos_ids] * n, dtype=dtype)
    if do_cfg:
        neg_embeds, neg_pooled = _negative_embeddings(pipe, negatives, embeds, pooled, device)
        embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
        neg_ids = torch.tensor([_time_ids(pipe, width, height, negative=True)] * n, dtype=dtype)
        time_ids = torch.cat([neg_ids, time_ids])
    added = {"text_embeds": pooled.to(device), "time_ids": time_ids.to(device)}
    return Conditioning(embeds.to(dtype=dtype, device=device), added)


def _negative_embeddings(pipe, negatives, embeds, pooled, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell: zeros for a None negative under force_zeros_for_empty_prompt, else the encoded text."""
    zeros = getattr(pipe.config, "force_zeros_for_empty_prompt", False)
    texts = [i for i, neg in enumerate(negatives) if not (neg is None and zeros)]
    neg_embeds, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    if texts:
        enc, enc_pooled = _encode_texts(pipe, [negatives[i] or "" for i in texts], device)
        neg_embeds[texts], neg_pooled[texts] = enc.to(neg_embeds.dtype), enc_pooled.to(neg_pooled.dtype)
    return neg_embeds, neg_pooled


_ENCODERS = {"sd1": _encode_sd1, "sdxl": _encode_sdxl}
