"""The placeholder token(s) being learned: added to the tokenizer, initialised from a word, trained in fp32.

Tokens are added as diffusers' script adds them (`tok`, `tok_1`, ... via `tokenizer.add_tokens`,
`resize_token_embeddings`, `get_input_embeddings()`). The learned vectors live in their own fp32
parameter, spliced into the embedding output by a forward hook: only they receive gradients, whatever the
text encoder's dtype (fp16 embedding weights go NaN within a step or two, diffusers #1438), and no other
row of the embedding matrix is ever written. After each optimizer step the vectors are copied into
their rows so the ordinary render path sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .errors import BadInput

if TYPE_CHECKING:
    from .models import StyleModel

GROW_BY = 64  # the embedding matrix grows in blocks of this many rows (as sd_styles.concepts grows it)


def vocab_tokens(token: str, n: int) -> list[str]:
    """`tok, tok_1, ..., tok_{n-1}`: diffusers' multi-vector names, which its prompt expansion finds."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def check_token(model: StyleModel, token: str, n: int) -> None:
    """The placeholder must be new to the vocabulary (reusing a slot this session added is fine)."""
    loaded = model.concepts.get(token)
    if loaded is not None and loaded.n_vectors != n:
        raise BadInput(f"the loaded concept {token!r} has {loaded.n_vectors} vector(s), not {n}; use another --token")
    if not token or any(c.isspace() for c in token):
        raise BadInput(f"--token must be one word without spaces, e.g. '<my-style>', got {token!r}")
    tokenizer = model.pipe.tokenizer
    vocab = tokenizer.get_vocab()
    for v in vocab_tokens(token, n):
        low = v.lower()
        if v in model.token_slots:
            continue
        if v in vocab or low in vocab or f"{low}</w>" in vocab:
            raise BadInput(f"token {v!r} is already in the model's vocabulary; pick a distinct placeholder "
                           "such as '<my-style>'")
    spare = f"{token}_{n}"
    if spare in vocab:  # diffusers' prompt expansion would pull it into every prompt with the token
        raise BadInput(f"token {spare!r} exists in the tokenizer and would join every prompt using {token!r}; "
                       "pick another --token or reload the model")


def init_ids(tokenizer, word: str, n: int) -> list[int]:
    """Token ids the n vectors start from: one token for all (diffusers), or exactly one token per vector."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    if len(ids) == 1:
        return ids * n
    if len(ids) == n:
        return ids
    raise BadInput(f"--init-word {word!r} is {len(ids)} tokens for this tokenizer ({' '.join(pieces)}); "
                   f"use a word that is one token, or --num-vectors {len(ids)} (one vector per token)")


def add_placeholder(model: StyleModel, token: str, n: int) -> list[int]:
    """Add (or reuse) the vocabulary slots of `token` with public APIs; returns their ids."""
    tokenizer, text_encoder = model.pipe.tokenizer, model.pipe.text_encoder
    from transformers import AddedToken

    names = vocab_tokens(token, n)
    new = [v for v in names if v not in model.token_slots]
    if new:
        rows = text_encoder.get_input_embeddings().num_embeddings
        if len(tokenizer) + len(new) > rows:
            with torch.random.fork_rng(devices=[]):  # the new rows' random init stays off the caller's RNG
                text_encoder.resize_token_embeddings(len(tokenizer) + len(new), pad_to_multiple_of=GROW_BY,
                                                     mean_resizing=False)
        # not normalised: matched exactly as written, like sd_styles.concepts adds tokens
        tokenizer.add_tokens([AddedToken(v, normalized=False, special=False) for v in new])
        model.token_slots.update({v: tokenizer.convert_tokens_to_ids(v) for v in new})
    return [model.token_slots[v] for v in names]


@dataclass
class TrainableTokens:
    """fp32 vectors (n, d) spliced into the embedding output wherever their ids appear."""

    ids: list[int]                  # vocabulary ids of tok, tok_1, ...
    vectors: torch.nn.Parameter     # (n, d) fp32, the only trainable tensor
    lookup: torch.Tensor            # (rows,) vocabulary id -> vector index, -1 elsewhere
    handle: object = None           # the forward hook's removable handle

    @classmethod
    def attach(cls, model: StyleModel, ids: list[int], init: torch.Tensor) -> "TrainableTokens":
        """Hook the embedding layer of `model`'s text encoder; `init` (n, d) are the starting vectors."""
        emb = model.pipe.text_encoder.get_input_embeddings()
        device = emb.weight.device
        vectors = torch.nn.Parameter(init.detach().to(device=device, dtype=torch.float32).clone())
        lookup = torch.full((emb.num_embeddings,), -1, dtype=torch.long, device=device)
        lookup[torch.tensor(ids, device=device)] = torch.arange(len(ids), device=device)
        self = cls(ids=ids, vectors=vectors, lookup=lookup)
        self.handle = emb.register_forward_hook(self._splice)
        self.sync(model)
        return self

    def _splice(self, module, args, output):  # output: (B, L, d)
        index = self.lookup[args[0]]  # (B, L)
        picked = self.vectors[index.clamp(min=0)].to(output.dtype)
        return torch.where((index >= 0).unsqueeze(-1), picked, output)

    def sync(self, model: StyleModel) -> None:
        """Copy the vectors into their embedding rows (previews and later renders use the plain path)."""
        weight = model.pipe.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[self.ids] = self.vectors.detach().to(weight.dtype)

    def detach_hook(self) -> None:
        """Remove the hook; the rows keep the last synced vectors."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def initial_vectors(model: StyleModel, init_word: str, n: int) -> torch.Tensor:
    """(n, d) fp32 copies of the init word's embedding row(s)."""
    weight = model.pipe.text_encoder.get_input_embeddings().weight
    ids = init_ids(model.pipe.tokenizer, init_word, n)
    return weight[ids].detach().float().cpu().clone()
