"""Every loadable real embedding renders the same image through our loader as through diffusers'.

Our side: `add_concept` / `remove_concept` file by file in one long-lived model (so the cases also
exercise reloading and slot reuse), rendered by our sampler. Reference: diffusers'
`StableDiffusionPipeline`, built once per module, with the files loaded by its own
`load_textual_inversion` (a list per pipeline, so a pipeline never holds one token twice).
Files diffusers cannot read itself (old ParameterDict pickles, PNG embeddings) reach it as a tensor
read independently here: torch's weights-only loader with ParameterDict admitted, PIL's text chunks.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest
import torch
from helpers import pixel_diff

from sd_styles.concepts import add_concept, remove_concept
from sd_styles.rendering import make_recipe, render

PROMPT = "a cat in the style of {}"
SEED, STEPS, SIZE = 7, 2, 64

# (file under embeddings/, our --token or None, how the reference gets it, the reference's token or None)
# The reference token is None where diffusers must find the same token we do on its own. It is given where
# diffusers needs one (emb_params, bare tensors) and, lowercased, for mixed-case multi-vector tokens: diffusers'
# normalised added tokens are matched lowercased and its prompt expansion then misses them (we match exactly).
SD1 = [
    *[(f"sd-concepts/{n}.bin", None, "file", None) for n in (
        "arcane-style-jv", "birb-style", "breakcore", "cat-toy", "dr-strange", "fairy-tale-painting-style",
        "gba-poke-sprites", "gta5-artwork", "illustration-style", "kuvshinov", "low-poly-hd-logos-icons",
        "midjourney-style", "moebius", "oil-style", "style-of-marc-allante", "watercolor-portrait")],
    ("sd-concepts/na-tarapisu153-s-artstyles", None, "file", None),        # a folder in the hub layout
    ("safetensors/diffusers-cat-toy-learned_embeds.safetensors", None, "file", None),
    ("safetensors/diffusers-detail-schemas-learned_embeds.safetensors", None, "file", None),
    ("safetensors/EasyNegative.safetensors", None, "file", "easynegative"),
    ("safetensors/EasyNegativeV2.safetensors", None, "file", "easynegativev2"),
    ("safetensors/sd15-emb_params-37vec.safetensors", None, "file", "sd15-emb_params-37vec"),
    ("a1111/EasyNegative.pt", None, "file", "easynegative"),
    ("a1111/bad-hands-5.pt", None, "file", None),
    ("a1111/bad_prompt_version2.pt", None, "file", None),
    ("a1111/badhandv4.pt", None, "file", None),
    ("a1111/cyber_collage.pt", None, "file", None),
    ("a1111/eyeliner2.pt", None, "file", None),
    ("a1111/CuteCafe-54500.pt", None, "file", "cutecafe-54500"),
    ("a1111/loaded_style_empire.bin", None, "file", "style_empire"),
    ("a1111/khyle-parameterdict.pt", None, "parameterdict", "khyle"),
    ("a1111/hades-legacy.pt", None, "parameterdict", "hades-legacy"),
    ("original-ti/anya.pt", "<anya>", "parameterdict", "<anya>"),         # 'anya' is a CLIP word
    ("a1111-png/khyle-4000.png", None, "png", "khyle-4000"),
    ("a1111-png/test_embedding.png", "<rick>", "png", "<rick>"),          # its name 'rick' is a CLIP word
]
SD2 = [
    ("sd2/buhu-art-style.bin", None, "file", None),
    ("sd2/vanellope2-learned_embeds.bin", None, "file", None),
    ("sd2/cartoonish_doll-a1111.pt", None, "file", None),
    ("sd2/gta-768v-a1111.pt", None, "file", "gta768v3-2800"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core box OpenMP spinning made each render
    ~50x slower; restored afterwards for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Setup:
    """Our model, and diffusers reference pipelines holding every case's file, for one tiny model folder."""

    def __init__(self, folder: Path, shared: Path, cases: list[tuple]):
        from diffusers import StableDiffusionPipeline

        from sd_styles.concepts import read_concept
        from sd_styles.models import load_model

        self.model = load_model(str(folder), device="cpu", dtype="fp32")
        base = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        groups: list[dict[str, tuple]] = []  # reference token -> case; one pipeline per group
        for case in cases:
            rel, token, _, ref_token = case
            key = ref_token or read_concept(str(shared / "embeddings" / rel), token).token
            group = next((g for g in groups if key not in g), None)
            if group is None:
                groups.append(group := {})
            group[key] = case
        self.ref: dict[str, object] = {}
        for group in groups:
            pipe = StableDiffusionPipeline(**{**base.components, "tokenizer": copy.deepcopy(base.tokenizer),
                                              "text_encoder": copy.deepcopy(base.text_encoder)},
                                           requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            # diffusers repeats a list's first token for every file when it is None: put a given one first
            members = sorted(group.values(), key=lambda c: c[3] is None)
            assert members[0][3] is not None
            files = [shared / "embeddings" / c[0] for c in members]
            pipe.load_textual_inversion([str(f) if c[2] == "file" else reference_tensor(f, c[2])
                                         for f, c in zip(files, members)], token=[c[3] for c in members])
            self.ref.update({c[0]: pipe for c in members})


@pytest.fixture(scope="module")
def sd1_setup(tiny_sd1_dir, shared_fixtures):
    return Setup(tiny_sd1_dir, shared_fixtures, SD1)


@pytest.fixture(scope="module")
def sd2_setup(tiny_sd2_dir, shared_fixtures):
    return Setup(tiny_sd2_dir, shared_fixtures, SD2)


def reference_tensor(path: Path, how: str) -> torch.Tensor:
    """Vectors of files diffusers cannot open itself, read without our parser."""
    if how == "parameterdict":
        with torch.serialization.safe_globals([torch.nn.ParameterDict, set]):
            params = torch.load(path, map_location="cpu", weights_only=True)["string_to_param"]
        return next(iter(params._parameters.values())).detach()
    from PIL import Image

    img = Image.open(path)
    img.load()
    data = json.loads(base64.b64decode(img.text["sd-ti-embedding"]))
    return torch.tensor(data["string_to_param"]["*"]["TORCHTENSOR"], dtype=torch.float32)


def check_same_image(setup: Setup, rel: str, path: Path, token: str | None, ref_token: str | None) -> None:
    concept = add_concept(setup.model, str(path), token=token)
    try:
        recipe = make_recipe(setup.model, PROMPT.format(concept.token), seed=SEED, steps=STEPS, width=SIZE,
                             height=SIZE, scheduler="pndm")  # the reference pipeline's own scheduler
        assert [c.token for c in recipe.concepts] == [concept.token]
        [ours] = render(setup.model, [recipe], progress=False)
        theirs = setup.ref[rel](PROMPT.format(ref_token or concept.token), num_inference_steps=STEPS, height=SIZE,
                                width=SIZE, generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
        assert pixel_diff(ours.image, theirs) <= 1
        # every vector is in the prompt: as many slots as the file has vectors, in the same order as diffusers'
        expanded = setup.model.pipe.maybe_convert_prompt(PROMPT.format(concept.token), setup.model.pipe.tokenizer)
        ids = setup.model.pipe.tokenizer(expanded).input_ids
        slots = setup.model.pipe.tokenizer.convert_tokens_to_ids(concept.tokens)
        assert [i for i in ids if i in slots] == slots and len(slots) == concept.n_vectors
    finally:
        remove_concept(setup.model, concept.token)


@pytest.mark.parametrize("rel,token,how,ref_token", SD1, ids=[c[0] for c in SD1])
def test_sd1_concept_renders_like_diffusers(shared_fixtures, sd1_setup, rel, token, how, ref_token):
    check_same_image(sd1_setup, rel, shared_fixtures / "embeddings" / rel, token, ref_token)


@pytest.mark.parametrize("rel,token,how,ref_token", SD2, ids=[c[0] for c in SD2])
def test_sd2_concept_renders_like_diffusers(shared_fixtures, sd2_setup, rel, token, how, ref_token):
    check_same_image(sd2_setup, rel, shared_fixtures / "embeddings" / rel, token, ref_token)


def test_concept_changes_the_image(shared_fixtures, sd1_setup):
    """Guards the comparison above: the same prompt renders differently with the concept than without."""
    model = sd1_setup.model
    recipe = make_recipe(model, PROMPT.format("<gta5-artwork>"), seed=SEED, steps=STEPS, width=SIZE, height=SIZE,
                         scheduler="pndm")
    [plain] = render(model, [recipe], progress=False)
    add_concept(model, str(shared_fixtures / "embeddings/sd-concepts/gta5-artwork.bin"))
    try:
        [styled] = render(model, [recipe], progress=False)
    finally:
        remove_concept(model, "<gta5-artwork>")
    assert pixel_diff(plain.image, styled.image) > 5
