"""Concepts on SDXL: {clip_l, clip_g} files load into both text encoders under one token, like diffusers.

Reference: diffusers' documented two-call loading of an SDXL embedding (`clip_g` into `text_encoder_2` /
`tokenizer_2`, `clip_l` into `text_encoder` / `tokenizer`), compared through diffusers' own
`StableDiffusionXLPipeline.encode_prompt` and its rendered image. The model is a tiny random SDXL base
with the real SDXL tokenizers and text encoders 768 and 1280 wide (tests/sdxl_tiny.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sdxl_tiny import as_style_model, load_tiny_sdxl

from sd_styles import cli
from sd_styles.concepts import add_concept, add_concepts, encoder_pairs, remove_concept
from sd_styles.errors import BadInput

SDXL_FILE = "safetensors/sdxl-clip_l-clip_g-37vec.safetensors"
TOKEN = "sdxl-clip_l-clip_g-37vec"  # the file stores no token: its name is the token
BASE_VOCAB = 49408                  # rows of the real CLIP vocabulary, before any concept


def emb(shared: Path, rel: str) -> str:
    return str(shared / "embeddings" / rel)


def encode(pipe, prompt: str, negative: str | None = None) -> tuple:
    """diffusers' SDXL prompt encoding: (embeds, negative embeds, pooled, negative pooled)."""
    with torch.no_grad():
        return pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                                  negative_prompt=negative)


def assert_same(a: tuple, b: tuple) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def snapshot(model) -> tuple:
    """Tokenizers, embedding matrices and loaded concepts of every text encoder: what a failed load keeps."""
    pairs = [(len(p.tokenizer), dict(p.tokenizer.get_added_vocab()),
              p.text_encoder.get_input_embeddings().weight.detach().clone()) for p in encoder_pairs(model.pipe)]
    return pairs, dict(model.concepts)


def assert_unchanged(model, before: tuple) -> None:
    after = snapshot(model)
    assert after[1] == before[1] and len(after[0]) == len(before[0])
    for (n, vocab, weight), (n0, vocab0, weight0) in zip(after[0], before[0]):
        assert n == n0 and vocab == vocab0 and torch.equal(weight, weight0)


def save_sdxl_file(path: Path, n: int, seed: int, widths=(768, 1280)) -> str:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file({"clip_l": torch.randn(n, widths[0], generator=g), "clip_g": torch.randn(n, widths[1], generator=g)},
              str(path))
    return str(path)


@pytest.fixture(scope="module")
def ours(tiny_sdxl_real_dir):
    """Our SDXL model (a diffusers StableDiffusionXLPipeline in a StyleModel); tests remove what they add."""
    return as_style_model(load_tiny_sdxl(tiny_sdxl_real_dir))


@pytest.fixture(scope="module")
def reference(tiny_sdxl_real_dir, shared_fixtures):
    """diffusers' pipeline with the fixture loaded by the documented two calls."""
    from safetensors.torch import load_file

    pipe = load_tiny_sdxl(tiny_sdxl_real_dir)
    state = load_file(emb(shared_fixtures, SDXL_FILE))
    pipe.load_textual_inversion(state["clip_g"], token=TOKEN, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    pipe.load_textual_inversion(state["clip_l"], token=TOKEN, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    return pipe


# ------------------------------------------------------------------------------------ parity with diffusers

def test_encoder_pairs_follow_the_pipeline(ours):
    assert [(p.key, p.width) for p in encoder_pairs(ours.pipe)] == [("clip_l", 768), ("clip_g", 1280)]
    assert encoder_pairs(ours.pipe)[1].text_encoder is ours.pipe.text_encoder_2


def test_sdxl_fixture_encodes_like_diffusers_two_call_loading(shared_fixtures, ours, reference):
    cases = [(f"a cat in the style of {TOKEN}", None), (f"{TOKEN}, a lighthouse at dusk", f"blurry {TOKEN}"),
             ("a plain prompt without the concept", "")]
    c = add_concept(ours, emb(shared_fixtures, SDXL_FILE))
    try:
        assert (c.token, c.n_vectors, c.format, c.widths) == (TOKEN, 37, "sdxl", (("clip_l", 768), ("clip_g", 1280)))
        for prompt, negative in cases:
            assert_same(encode(ours.pipe, prompt, negative), encode(reference, prompt, negative))
        for tokenizer in (ours.pipe.tokenizer, ours.pipe.tokenizer_2):  # 37 vectors, in order, in both tokenizers
            ids = tokenizer(ours.pipe.maybe_convert_prompt(f"a {TOKEN} cat", tokenizer)).input_ids
            slots = tokenizer.convert_tokens_to_ids(c.tokens)
            assert len(set(slots)) == 37 and [i for i in ids if i in slots] == slots
    finally:
        remove_concept(ours, TOKEN)
    # the comparison can fail: without the concept the same prompt encodes differently
    assert not torch.equal(encode(ours.pipe, cases[0][0])[0], encode(reference, cases[0][0])[0])


def test_sdxl_fixture_renders_the_same_image_as_diffusers(shared_fixtures, ours, reference):
    kwargs = dict(prompt=f"a cat in the style of {TOKEN}", num_inference_steps=2, height=64, width=64,
                  output_type="np")
    add_concept(ours, emb(shared_fixtures, SDXL_FILE))
    try:
        mine = ours.pipe(generator=torch.Generator().manual_seed(3), **kwargs).images
    finally:
        remove_concept(ours, TOKEN)
    theirs = reference(generator=torch.Generator().manual_seed(3), **kwargs).images
    plain = ours.pipe(generator=torch.Generator().manual_seed(3), **kwargs).images  # token now carries nothing
    assert np.array_equal(mine, theirs)
    assert not np.array_equal(plain, theirs)


def test_sdxl_fixture_through_our_loop_renders_like_diffusers(shared_fixtures, tiny_sdxl_real_dir, reference,
                                                              capsys, tmp_path):
    """`sd-styles generate --concept` on SDXL (our loader, our loop) vs diffusers' two-call loading and pipeline."""
    from helpers import pixel_diff
    from PIL import Image

    from sd_styles.schedulers import make_scheduler

    prompt = f"a cat in the style of {TOKEN}"
    code = cli.main(["generate", prompt, "--model", str(tiny_sdxl_real_dir),
                     "--concept", emb(shared_fixtures, SDXL_FILE), "--steps", "2", "--size", "64x48", "--seed", "3", "--scheduler", "euler", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    ours = Image.open(out.split()[0]).convert("RGB")
    original = reference.scheduler
    reference.scheduler = make_scheduler("euler", original.config)
    try:
        theirs = reference(prompt, width=64, height=48, num_inference_steps=2, guidance_scale=7.5,
                           generator=[torch.Generator("cpu").manual_seed(3)]).images[0]
    finally:
        reference.scheduler = original
    assert pixel_diff(ours, theirs) <= 1


def test_refiner_takes_clip_g_only_like_diffusers(shared_fixtures, tiny_sdxl_real_dir):
    """A refiner has tokenizer_2 / text_encoder_2 only: the file's clip_g vectors go there, clip_l is unused."""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from safetensors.torch import load_file

    def refiner():
        return StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_sdxl_real_dir, text_encoder=None, tokenizer=None,
                                                                add_watermarker=False)

    theirs = refiner()
    theirs.load_textual_inversion(load_file(emb(shared_fixtures, SDXL_FILE))["clip_g"], token=TOKEN,
                                  text_encoder=theirs.text_encoder_2, tokenizer=theirs.tokenizer_2)
    mine = as_style_model(refiner())
    assert [p.key for p in encoder_pairs(mine.pipe)] == ["clip_g"]
    c = add_concept(mine, emb(shared_fixtures, SDXL_FILE))
    assert c.widths == (("clip_g", 1280),)
    assert_same(encode(mine.pipe, f"a {TOKEN} house", "ugly"), encode(theirs, f"a {TOKEN} house", "ugly"))
    with pytest.raises(BadInput, match=r"1280 wide \(SDXL refiner: clip_g\)"):
        add_concept(mine, emb(shared_fixtures, "safetensors/sd15-emb_params-37vec.safetensors"))


# ------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("rel, words", [
    ("safetensors/sd15-emb_params-37vec.safetensors", ("768-wide vectors (SD 1.x)", "768+1280 wide (SDXL")),
    ("sd2/buhu-art-style.bin", ("1024-wide vectors (SD 2.x)", "768+1280 wide (SDXL")),
])
def test_sd1_and_sd2_concepts_on_sdxl_are_refused_naming_both_widths(shared_fixtures, ours, rel, words):
    before = snapshot(ours)
    with pytest.raises(BadInput) as err:
        add_concept(ours, emb(shared_fixtures, rel))
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert_unchanged(ours, before)


def test_sdxl_concept_on_sd1_is_refused_naming_both_widths(shared_fixtures, tiny_sd1_dir):
    from sd_styles.models import load_model

    model = load_model(str(tiny_sd1_dir), device="cpu", dtype="fp32")
    before = snapshot(model)
    with pytest.raises(BadInput) as err:
        add_concept(model, emb(shared_fixtures, SDXL_FILE))
    msg = str(err.value)
    assert "\n" not in msg and "SDXL embedding (768+1280 wide" in msg and "768 wide (SD 1.x)" in msg, msg
    assert_unchanged(model, before)


def test_sdxl_concept_on_sd1_through_the_cli_is_one_line(shared_fixtures, tiny_sd1_dir, tmp_path, capsys):
    code = cli.main(["generate", "a cat", "--model", str(tiny_sd1_dir), "--device", "cpu", "--steps", "1",
                     "--concept", emb(shared_fixtures, SDXL_FILE), "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if not line.startswith("Loading ")]
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(lines) == 1 and "768+1280" in lines[0] and "768 wide (SD 1.x)" in lines[0], err
    assert not list(tmp_path.iterdir())


def test_sdxl_file_with_a_wrong_encoder_width_is_refused(tmp_path, ours):
    before = snapshot(ours)
    words = r"its clip_g vectors are 1024 wide but this model's text encoders are 768\+1280"
    with pytest.raises(BadInput, match=words):
        add_concept(ours, save_sdxl_file(tmp_path / "wrong.safetensors", 2, seed=0, widths=(768, 1024)), token="<w>")
    assert_unchanged(ours, before)


def test_failed_batch_on_sdxl_loads_nothing(shared_fixtures, ours, tmp_path):
    before = snapshot(ours)
    with pytest.raises(BadInput, match="SD 1.x"):
        add_concepts(ours, [emb(shared_fixtures, SDXL_FILE),
                            emb(shared_fixtures, "safetensors/sd15-emb_params-37vec.safetensors")])
    with pytest.raises(BadInput, match="already a word"):  # 'cat' is a word of both SDXL tokenizers
        add_concept(ours, save_sdxl_file(tmp_path / "cat.safetensors", 1, seed=0), token="cat")
    assert_unchanged(ours, before)


# ------------------------------------------------------------------------------ unload, reload, swap

def test_unload_and_swap_leave_both_encoders_as_before(shared_fixtures, ours, tmp_path):
    pipe = ours.pipe
    rows = lambda: [p.text_encoder.get_input_embeddings().weight[:BASE_VOCAB].clone()  # noqa: E731
                    for p in encoder_pairs(pipe)]
    plain = ("a photo of a lighthouse", "blurry, low quality")
    rows0, plain0 = rows(), encode(pipe, *plain)
    other = save_sdxl_file(tmp_path / "other.safetensors", 37, seed=1)
    same_token = save_sdxl_file(tmp_path / "replacement.safetensors", 37, seed=2)

    c = add_concept(ours, emb(shared_fixtures, SDXL_FILE))
    with_concept = encode(pipe, f"a {TOKEN} lighthouse")
    sizes = [len(p.tokenizer) for p in encoder_pairs(pipe)]
    for _ in range(2):                                      # swap back and forth: no growth, same results
        remove_concept(ours, TOKEN)
        for p in encoder_pairs(pipe):                       # the token carries nothing in either encoder
            assert not p.text_encoder.get_input_embeddings().weight[p.tokenizer.convert_tokens_to_ids(c.tokens)].any()
        add_concept(ours, other, token="<other-style>")
        remove_concept(ours, "<other-style>")
        add_concept(ours, emb(shared_fixtures, SDXL_FILE))
        assert_same(encode(pipe, f"a {TOKEN} lighthouse"), with_concept)
    assert [len(p.tokenizer) for p in encoder_pairs(pipe)] == [s + 37 for s in sizes]

    add_concept(ours, same_token, token=TOKEN)              # another file under the same token: in place
    from safetensors.torch import load_file
    vectors = load_file(same_token)
    for p in encoder_pairs(pipe):
        weight = p.text_encoder.get_input_embeddings().weight
        assert torch.equal(weight[p.tokenizer.convert_tokens_to_ids(c.tokens)], vectors[p.key])
    remove_concept(ours, TOKEN)

    assert ours.concepts == {}
    for now, then in zip(rows(), rows0):                    # the real vocabulary's rows were never touched
        assert torch.equal(now, then)
    assert_same(encode(pipe, *plain), plain0)               # prompts without concepts encode bit for bit as before
