"""Textual-inversion concepts: read them from any source and load them into a model's text encoder.

Loading follows diffusers' `load_textual_inversion` (a token per vector, extra vectors named `tok_1`,
`tok_2`, ... so `pipe.maybe_convert_prompt` expands them) with what it lacks: every layout seen in the
wild, safe unpickling, one-line errors, validation of everything before the tokenizer or the text
encoder is touched, and reloading / swapping concepts in one session without the vocabulary growing.

Only public APIs change the model: `tokenizer.add_tokens`, `text_encoder.resize_token_embeddings` and
`get_input_embeddings()`. A tokenizer cannot forget an added token, so vocabulary slots we added are
remembered on the model (`model.token_slots`) and reused when the same token is loaded again; a removed concept's slots
keep their ids but get zero vectors. Tokens match prompts exactly as written (case included).

SDXL has two tokenizer / text-encoder pairs (`tokenizer` + `text_encoder`: CLIP ViT-L, 768 wide;
`tokenizer_2` + `text_encoder_2`: OpenCLIP bigG, 1280 wide). An SDXL file's `clip_l` vectors go into the
first pair and its `clip_g` vectors into the second, under the same token in both tokenizers, as diffusers'
documented two `load_textual_inversion` calls do; a refiner has only the second pair and gets `clip_g`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .concept_sources import resolve_source
from .embedding_formats import SDXL_KEYS, TEXT, WIDTHS_HELP, Embedding, family_of, parse_embedding
from .errors import BadInput

if TYPE_CHECKING:
    from .models import StyleModel

GROW_BY = 64  # the embedding matrix grows in blocks of this many rows


@dataclass(frozen=True)
class EncoderPair:
    """One tokenizer + text encoder of a model, and which vectors of a concept file it takes."""

    key: str                # TEXT for SD 1.x / 2.x; clip_l or clip_g (the SDXL file's keys) for SDXL
    tokenizer: object       # a transformers CLIP tokenizer
    text_encoder: object    # CLIPTextModel (or CLIPTextModelWithProjection for SDXL's second encoder)

    @property
    def width(self) -> int:
        return self.text_encoder.get_input_embeddings().embedding_dim


def encoder_pairs(pipe) -> list[EncoderPair]:
    """The model's tokenizer / text-encoder pairs: one for SD 1.x / 2.x, two for SDXL, clip_g only for a refiner."""
    if getattr(pipe, "text_encoder_2", None) is None:
        return [EncoderPair(TEXT, pipe.tokenizer, pipe.text_encoder)]
    pairs = (("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2))
    return [EncoderPair(k, tok, te) for k, tok, te in pairs if te is not None]


def model_widths(pairs: list[EncoderPair]) -> str:
    """How a width message names the model: '768 wide (SD 1.x)' or '768+1280 wide (SDXL: clip_l+clip_g)'."""
    if pairs[0].key == TEXT:
        return f"{pairs[0].width} wide ({family_of(pairs[0].width)})"
    keys = "+".join(p.key for p in pairs)
    kind = "SDXL" if len(pairs) == 2 else "SDXL refiner"
    return f"{'+'.join(str(p.width) for p in pairs)} wide ({kind}: {keys})"


@dataclass(frozen=True)
class ConceptFile:
    """A concept read from its source, not yet in any model."""

    source: str             # as given: hub id, file or folder
    path: str               # the embedding file read (in the HF cache for hub ids)
    token: str              # the trigger token, after precedence: --token, file's own, token_identifier.txt, name
    token_origin: str       # which of those it came from
    sha256: str             # of the embedding file's bytes
    embedding: Embedding
    revision: str | None = None  # hub commit of the cached snapshot read (hub ids only)

    @property
    def vocab_tokens(self) -> list[str]:
        """The vocabulary tokens a load adds: token, token_1, ... (diffusers' multi-vector naming)."""
        return [self.token] + [f"{self.token}_{i}" for i in range(1, self.embedding.n_vectors)]

    def describe(self) -> dict:
        """What `sd-styles concepts inspect` prints."""
        e = self.embedding
        return {"source": self.source, "path": self.path, "sha256": self.sha256, "format": e.format,
                "container": e.container, "token": self.token, "token_origin": self.token_origin,
                "file_token": e.own_token, "tokens": self.vocab_tokens, "n_vectors": e.n_vectors,
                "width": e.widths if e.is_sdxl else e.widths[TEXT], "fits": e.family}


@dataclass(frozen=True)
class LoadedConcept:
    """A concept loaded into a model (kept in `model.concepts[token]`)."""

    source: str
    token: str
    sha256: str
    format: str
    width: int              # width of the first text encoder it went into (768 for SDXL's clip_l)
    n_vectors: int
    tokens: list[str]       # vocabulary tokens it occupies: token, token_1, ...
    path: str = ""
    widths: tuple = ()      # (encoder key, width) per text encoder it went into: (("clip_l", 768), ("clip_g", 1280))
    revision: str | None = None  # hub commit the file came from (hub ids only): recipes record it


def read_concept(source: str, token: str | None = None, revision: str | None = None) -> ConceptFile:
    """Resolve and parse `source` (no model needed); `token` overrides the file's own token.

    `revision` pins a hub concept to a commit (what a recipe recorded)."""
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise BadInput(f"--token must be a non-empty string, got {token!r}")
    local = resolve_source(source, revision)
    data = local.read()
    embedding = parse_embedding(data, source)
    candidates = ((token, "--token"), (embedding.own_token, "file"),
                  (local.token_file, "token_identifier.txt"), (local.name, "file name"))
    chosen, origin = next(((t.strip(), o) for t, o in candidates if t and t.strip()), (None, None))
    if chosen is None:
        raise BadInput(f"{source} names no token: pass one with --token")
    return ConceptFile(source=source, path=str(local.path), token=chosen, token_origin=origin,
                       sha256=hashlib.sha256(data).hexdigest(), embedding=embedding, revision=local.revision)


def add_concept(model: StyleModel, source: str, token: str | None = None,
                revision: str | None = None) -> LoadedConcept:
    """Load one concept into `model` (replacing a loaded concept with the same token); `revision`: hub commit."""
    return add_concepts(model, [source], token=token, revision=revision)[0]


def add_concepts(model: StyleModel, sources: list[str], token: str | None = None,
                 revision: str | None = None) -> list[LoadedConcept]:
    """Load several concepts at once: all are validated first, so a failure changes nothing."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    if token is not None and len(sources) != 1:
        raise BadInput(f"--token needs exactly one --concept, got {len(sources)}")
    if revision is not None and len(sources) != 1:
        raise BadInput(f"a revision pins exactly one concept, got {len(sources)}")
    files = [read_concept(s, token, revision) for s in sources]
    _check(model, files)
    return [_install(model, f) for f in files]


def remove_concept(model: StyleModel, token: str) -> None:
    """Unload a concept: its token stops carrying the concept (its slots stay for reuse, zeroed)."""
    concept = model.concepts.pop(token, None)
    if concept is None:
        loaded = ", ".join(model.concepts) or "none"
        raise BadInput(f"no concept with token {token!r} is loaded (loaded: {loaded})")
    for pair in encoder_pairs(model.pipe):
        ids = pair.tokenizer.convert_tokens_to_ids(concept.tokens)
        weight = pair.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[ids] = 0


def _check(model: StyleModel, files: list[ConceptFile]) -> None:
    """Every reason a load could fail, checked before anything is modified."""
    pairs = encoder_pairs(model.pipe)
    for f in files:
        _check_widths(f, pairs)
    seen = [f.token for f in files]
    if len(set(seen)) < len(seen):
        raise BadInput(f"two concepts want the same token ({', '.join(seen)}); give each its own token")
    slots = model.token_slots
    added: set[str] = set()
    for pair in pairs:
        mine = {t.content for t in pair.tokenizer.added_tokens_decoder.values() if not t.special}
        _check_tokens(files, set(pair.tokenizer.get_vocab()) - mine, mine, slots)
        added |= mine
    _check_vocabulary_use(model, files, added | {v for f in files for v in f.vocab_tokens}, slots)


def _check_widths(f: ConceptFile, pairs: list[EncoderPair]) -> None:
    """The file has vectors for every text encoder of the model, each as wide as that encoder (one-line refusals)."""
    e, sdxl_model = f.embedding, pairs[0].key != TEXT
    model = f"this model's text encoder{'s are' if sdxl_model else ' is'} {model_widths(pairs)}; {WIDTHS_HELP}"
    if e.is_sdxl != sdxl_model:
        kind = f"is an SDXL embedding ({e.width_label} wide: {'+'.join(SDXL_KEYS)})" if e.is_sdxl else \
            f"has {e.width_label}-wide vectors ({e.family})"
        raise BadInput(f"{f.source} {kind} but {model}")
    for pair in pairs:
        if e.widths[pair.key] != pair.width:
            what = f"its {pair.key} vectors are {e.widths[pair.key]} wide" if sdxl_model else \
                f"has {e.widths[pair.key]}-wide vectors ({e.family})"
            raise BadInput(f"{f.source} {what} but {model}")


def _check_tokens(files: list[ConceptFile], base: set[str], added: set[str], slots: dict) -> None:
    """No concept token is a word of this tokenizer, or a token other code added to it."""
    for f in files:
        for v in f.vocab_tokens:
            low = v.lower()  # CLIP lowercases prompts: "Cat" would shadow the word "cat"
            if v in base or low in base or f"{low}</w>" in base:
                raise BadInput(f"token {v!r} of {f.source} is already a word in the model's vocabulary; "
                               "pick a distinct trigger token with --token, e.g. '<my-style>'")
            if v in added and v not in slots:
                raise BadInput(f"token {v!r} of {f.source} was already added to the tokenizer by other code; "
                               "pick another with --token")


def _check_vocabulary_use(model: StyleModel, files: list[ConceptFile], vocab: set[str], slots: dict[str, int]) -> None:
    """Each vocabulary token serves one concept, and every concept's prompt expansion is exactly its vectors."""
    # diffusers' maybe_convert_prompt expands `tok` to `tok tok_1 tok_2 ...` for as long as those exist in the
    # tokenizer, so a stray `tok_<n>` (a spare slot, or another concept's token) would join every prompt
    replaced = {f.token for f in files}  # loading a token again replaces its concept
    kept = {t: c for t, c in model.concepts.items() if t not in replaced}
    claims = [(v, t) for t, c in kept.items() for v in c.tokens] + [(v, f.token) for f in files for v in f.vocab_tokens]
    owner: dict[str, str] = {}
    for v, t in claims:
        if owner.setdefault(v, t) != t:
            raise BadInput(f"token {v!r} is already used by the concept {owner[v]!r}; pick another --token")
    sizes = {t: c.n_vectors for t, c in kept.items()} | {f.token: f.embedding.n_vectors for f in files}
    for tok, n in sizes.items():
        extra = f"{tok}_{n}"
        if extra not in vocab:
            continue
        if extra in slots and extra not in owner:  # tokenizers cannot forget a token: a spare slot stays
            raise BadInput(f"token {tok!r} had more vectors in an earlier load this session and its spare slot "
                           f"{extra!r} cannot be freed; use another --token or reload the model")
        raise BadInput(f"token {tok!r} would pull {extra!r} (another token) into every prompt that uses it; "
                       "pick another --token")


def _install(model: StyleModel, f: ConceptFile) -> LoadedConcept:
    """Write the vectors into every text encoder: reuse our slots for known tokens, add (and grow) for new ones."""
    pairs = encoder_pairs(model.pipe)
    slots = model.token_slots
    new = [v for v in f.vocab_tokens if v not in slots]
    ids = [_write(pair, f.vocab_tokens, new, f.embedding.vectors[pair.key]) for pair in pairs]
    slots.update({v: ids[0][f.vocab_tokens.index(v)] for v in new})  # ids in the first tokenizer (each has its own)
    widths = tuple((p.key, p.width) for p in pairs)
    loaded = LoadedConcept(source=f.source, token=f.token, sha256=f.sha256, format=f.embedding.format,
                           width=widths[0][1], n_vectors=f.embedding.n_vectors, tokens=f.vocab_tokens,
                           path=f.path, widths=widths, revision=f.revision)
    model.concepts[f.token] = loaded
    return loaded


def _write(pair: EncoderPair, tokens: list[str], new: list[str], vectors: torch.Tensor) -> list[int]:
    """Add `new` to this pair's tokenizer (growing its encoder's matrix if needed), then set the rows of `tokens`."""
    tokenizer, text_encoder = pair.tokenizer, pair.text_encoder
    if new:
        rows = text_encoder.get_input_embeddings().num_embeddings
        if len(tokenizer) + len(new) > rows:
            # Grow in blocks so the next concepts usually fit without copying the whole matrix again. New rows
            # are overwritten below; forking the RNG keeps their random init off the caller's generator.
            with torch.random.fork_rng(devices=[]):
                text_encoder.resize_token_embeddings(len(tokenizer) + len(new), pad_to_multiple_of=GROW_BY,
                                                     mean_resizing=False)
        tokenizer.add_tokens([_added_token(v) for v in new])
    ids = tokenizer.convert_tokens_to_ids(tokens)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = vectors.to(dtype=weight.dtype, device=weight.device)
    return ids


def _added_token(content: str):
    """The token as an AddedToken matched exactly as written (case included)."""
    # Not normalised: CLIP's normaliser lowercases, so a mixed-case multi-vector token (`CuteCafe-54500`) would
    # come out of tokenize() lowercased and diffusers' prompt expansion would never find its `_1`, `_2` slots.
    from transformers import AddedToken

    return AddedToken(content, normalized=False, special=False)

