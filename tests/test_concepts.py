"""Concept loading: formats, safety, one-line errors, untouched models after failures, reloading, hub, catalog.

Synthetic embeddings run everywhere; tests on the real files in ../shared/fixtures skip without them.
The diffusers pixel equivalence of every real sample is in test_concepts_render.py.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sd_styles import cli
from sd_styles.concepts import add_concept, add_concepts, read_concept, remove_concept
from sd_styles.errors import BadInput

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers

def emb(rel: str, shared: Path) -> str:
    return str(shared / "embeddings" / rel)


def save_pt(path: Path, obj) -> str:
    torch.save(obj, path)
    return str(path)


def vectors(n: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def snapshot(model) -> tuple:
    """Everything a failed load must leave as it was."""
    tok = model.pipe.tokenizer
    weight = model.pipe.text_encoder.get_input_embeddings().weight
    return len(tok), dict(tok.get_added_vocab()), weight.detach().clone(), dict(model.concepts)


def assert_unchanged(model, before: tuple) -> None:
    after = snapshot(model)
    assert after[0] == before[0] and after[1] == before[1] and after[3] == before[3]
    assert torch.equal(after[2], before[2])


def cli_error(capsys, argv: list[str], progress_before: bool = False) -> str:
    """Run the CLI in-process; assert exit 2, nothing on stdout and one stderr line (no traceback).

    `progress_before`: the model loads first, and diffusers' loading bar (progress on stderr is allowed
    by the contract) may precede the message, which must then be the one last line.
    """
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "" and "Traceback" not in err, err
    lines = err.strip().splitlines()
    if progress_before:
        lines = [line for line in lines if not line.startswith("Loading ")]
    assert len(lines) == 1 and lines[0].startswith("sd-styles: error: "), err
    return err


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """Our own tiny model (32-wide, byte tokenizer): tests here add tokens, which never leave a tokenizer."""
    from sd_styles.models import load_model

    return load_model(str(tiny_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def sd1(tiny_sd1_dir):
    """A 768-wide model with the real SD 1.5 tokenizer, for the real files."""
    from sd_styles.models import load_model

    return load_model(str(tiny_sd1_dir), device="cpu", dtype="fp32")


# ------------------------------------------------------------------------------- formats of the real files

# (file, format, token, n_vectors, width) as the fixtures README documents them
REAL = [
    ("sd-concepts/gta5-artwork.bin", "sd-concepts", "<gta5-artwork>", 1, 768),
    ("sd-concepts/oil-style.bin", "sd-concepts", "oil_style", 1, 768),
    ("sd-concepts/style-of-marc-allante.bin", "sd-concepts", "<Marc Allante>", 1, 768),
    ("sd-concepts/gba-poke-sprites.bin", "sd-concepts", "<GBA-Poke-Sprites>", 1, 768),
    ("sd-concepts/low-poly-hd-logos-icons.bin", "sd-concepts", "<low-poly-hd-logos-icons>", 1, 768),
    ("sd-concepts/na-tarapisu153-s-artstyles", "sd-concepts", "<na-tarapisu153>", 1, 768),
    ("safetensors/diffusers-cat-toy-learned_embeds.safetensors", "diffusers", "<cat-toy>", 1, 768),
    ("safetensors/EasyNegativeV2.safetensors", "emb_params", "EasyNegativeV2", 16, 768),
    ("safetensors/sd15-emb_params-37vec.safetensors", "emb_params", "sd15-emb_params-37vec", 37, 768),
    ("a1111/EasyNegative.pt", "emb_params", "EasyNegative", 8, 768),
    ("a1111/badhandv4.pt", "a1111", "badhandv3", 6, 768),  # A1111's `name`, not the file name
    ("a1111/loaded_style_empire.bin", "a1111", "Style_Empire", 3, 768),
    ("a1111/CuteCafe-54500.pt", "a1111", "CuteCafe-54500", 16, 768),
    ("a1111/khyle-parameterdict.pt", "textual-inversion", "khyle", 16, 768),
    ("a1111/hades-legacy.pt", "textual-inversion", "hades-legacy", 17, 768),
    ("original-ti/anya.pt", "textual-inversion", "anya", 1, 768),
    ("a1111-png/test_embedding.png", "a1111", "rick", 8, 768),
    ("a1111-png/khyle-4000.png", "a1111", "khyle-4000", 16, 768),
    ("sd2/buhu-art-style.bin", "sd-concepts", "<buhu>", 1, 1024),
    ("sd2/gta-768v-a1111.pt", "a1111", "GTA768v3-2800", 12, 1024),
]


@pytest.mark.parametrize("rel,fmt,token,n,width", REAL, ids=[r[0] for r in REAL])
def test_real_files_parse(shared_fixtures, rel, fmt, token, n, width):
    c = read_concept(emb(rel, shared_fixtures))
    assert (c.embedding.format, c.token, c.embedding.n_vectors, c.embedding.widths["text_encoder"]) == \
        (fmt, token, n, width)
    assert c.vocab_tokens == [token] + [f"{token}_{i}" for i in range(1, n)]


def test_sdxl_file_is_parsed_and_reported(shared_fixtures):
    c = read_concept(emb("safetensors/sdxl-clip_l-clip_g-37vec.safetensors", shared_fixtures))
    d = c.describe()
    assert (d["format"], d["n_vectors"], d["width"], d["fits"]) == ("sdxl", 37, {"clip_l": 768, "clip_g": 1280}, "SDXL")


def test_token_precedence(shared_fixtures, tmp_path):
    # --token beats the file's own token; the file's token beats token_identifier.txt; then the file name
    assert read_concept(emb("sd-concepts/gta5-artwork.bin", shared_fixtures), token="<gta>").token == "<gta>"
    folder = tmp_path / "my-style"
    folder.mkdir()
    (folder / "learned_embeds.bin").write_bytes((shared_fixtures / "embeddings/sd-concepts/moebius.bin").read_bytes())
    (folder / "token_identifier.txt").write_text("<other>\n")
    assert read_concept(str(folder)).token == "<moebius>"
    from safetensors.torch import save_file
    save_file({"emb_params": vectors(2, 768)}, str(folder / "learned_embeds.safetensors"))  # no own token
    c = read_concept(str(folder))
    assert (c.token, c.token_origin, c.embedding.format) == ("<other>", "token_identifier.txt", "emb_params")
    (folder / "token_identifier.txt").unlink()
    assert read_concept(str(folder)).token == "my-style"


def test_parameterdict_files_match_torch_reading_them(shared_fixtures):
    # reference: torch's own weights-only loader with the real ParameterDict class admitted
    for rel, key in [("original-ti/anya.pt", "*"), ("a1111/khyle-parameterdict.pt", "khyle"),
                     ("a1111/hades-legacy.pt", "*")]:
        with torch.serialization.safe_globals([torch.nn.ParameterDict, set]):
            ref = torch.load(emb(rel, shared_fixtures), map_location="cpu", weights_only=True)
        c = read_concept(emb(rel, shared_fixtures))
        assert c.embedding.container == "torch (allow-list unpickler)"
        assert torch.equal(c.embedding.vectors["text_encoder"], ref["string_to_param"][key].detach())


def test_png_embedding_matches_pil_decoding(shared_fixtures):
    from PIL import Image

    path = emb("a1111-png/test_embedding.png", shared_fixtures)
    img = Image.open(path)
    img.load()
    data = json.loads(base64.b64decode(img.text["sd-ti-embedding"]))
    ref = torch.tensor(data["string_to_param"]["*"]["TORCHTENSOR"], dtype=torch.float32)
    c = read_concept(path)
    assert c.token == data["name"] == "rick"
    assert torch.equal(c.embedding.vectors["text_encoder"], ref)


def test_sha256_is_of_the_file(shared_fixtures):
    c = read_concept(emb("sd-concepts/gta5-artwork.bin", shared_fixtures))
    assert c.sha256 == "1e58b1a7e49aaf5122d2959a248c2e73d66da7e858871676a7094bdfb1fb962f"  # fixtures README


# -------------------------------------------------------------------------------------- safety: no code runs

class _Evil:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _evil_files(tmp_path: Path, marker: Path) -> dict[str, str]:
    cmd = f"touch {marker}"
    files = {
        "zip-os.system": save_pt(tmp_path / "a.pt", {"<x>": torch.zeros(32), "x": _Evil(os.system, (cmd,))}),
        "zip-open": save_pt(tmp_path / "b.bin", {"<x>": _Evil(open, (str(marker), "w"))}),
        # weights_only refuses the ParameterDict, so the allow-list unpickler sees the payload next to it
        "zip-parameterdict+payload": save_pt(tmp_path / "c.pt", {
            "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(1, 32))}),
            "name": _Evil(os.system, (cmd,))}),
    }
    raw = tmp_path / "d.pt"
    raw.write_bytes(pickle.dumps({"<x>": _Evil(os.system, (cmd,))}, protocol=2))
    files["raw-pickle"] = str(raw)
    return files


@pytest.mark.parametrize("kind", ["zip-os.system", "zip-open", "zip-parameterdict+payload", "raw-pickle"])
def test_code_in_a_pickle_never_runs(tmp_path, kind, tiny):
    marker = tmp_path / "pwned"
    path = _evil_files(tmp_path, marker)[kind]
    before = snapshot(tiny)
    with pytest.raises(BadInput, match="refused"):
        add_concept(tiny, path)
    assert not marker.exists()
    assert_unchanged(tiny, before)


def test_allow_list_unpickler_refuses_unknown_globals(tmp_path):
    from sd_styles.safe_pickle import RefusedPickle, load_torch_zip

    marker = tmp_path / "pwned"
    data = Path(_evil_files(tmp_path, marker)["zip-parameterdict+payload"]).read_bytes()
    with pytest.raises(RefusedPickle) as err:
        load_torch_zip(data)
    assert err.value.what in ("posix.system", "nt.system", "os.system")
    assert not marker.exists()


def test_code_in_a_pickle_refused_through_the_cli(tmp_path, capsys):
    marker = tmp_path / "pwned"
    err = cli_error(capsys, ["concepts", "inspect", _evil_files(tmp_path, marker)["zip-os.system"]])
    assert "refused" in err and not marker.exists()


# ------------------------------------------------------------------------ errors: one line, model untouched

ERRORS = {  # name -> (file under embeddings/ or a tmp file written by the test, words the message must hold)
    "lfs-pointer": ("broken/lfs-pointer-learned_embeds.safetensors", "Git LFS pointer"),
    "corrupt": ("broken/kkomda-corrupted.pt", "corrupt"),
    "sd2-on-sd1": ("sd2/buhu-art-style.bin", "1024-wide vectors (SD 2.x)"),
    "sdxl-on-sd1": ("safetensors/sdxl-clip_l-clip_g-37vec.safetensors", "SDXL"),
    "in-vocabulary": ("a1111-png/test_embedding.png", "--token"),          # name 'rick' is a CLIP word
    "in-vocabulary-file-name": ("original-ti/anya.pt", "--token"),         # 'anya' is too
    "missing-file": ("sd-concepts/no-such-style.bin", "no such file"),
    "png-without-embedding": ("../png-info/sd-parsers/automatic1111_cropped.png", "sd-ti-embedding"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_leave_the_model_untouched(shared_fixtures, sd1, case):
    rel, words = ERRORS[case]
    before = snapshot(sd1)
    with pytest.raises(BadInput) as err:
        add_concept(sd1, emb(rel, shared_fixtures))
    msg = str(err.value)
    assert words in msg and "\n" not in msg
    assert_unchanged(sd1, before)


def test_width_message_names_both_widths_and_families(shared_fixtures, sd1):
    with pytest.raises(BadInput) as err:
        add_concept(sd1, emb("sd2/buhu-art-style.bin", shared_fixtures))
    msg = str(err.value)
    assert all(w in msg for w in ("1024", "SD 2.x", "768", "SD 1.x", "768+1280", "SDXL"))


@pytest.mark.parametrize("case", ["lfs-pointer", "corrupt", "missing-file", "png-without-embedding"])
def test_inspect_errors_through_the_cli(shared_fixtures, capsys, case):
    rel, words = ERRORS[case]
    assert words in cli_error(capsys, ["concepts", "inspect", emb(rel, shared_fixtures)])


@pytest.mark.parametrize("case", ["sd2-on-sd1", "in-vocabulary", "lfs-pointer"])
def test_generate_errors_through_the_cli(shared_fixtures, tiny_sd1_dir, tmp_path, capsys, case):
    rel, words = ERRORS[case]
    argv = ["generate", "a cat", "--model", str(tiny_sd1_dir), "--device", "cpu", "--steps", "1",
            "--concept", emb(rel, shared_fixtures), "--out", str(tmp_path)]
    assert words in cli_error(capsys, argv, progress_before=True)
    assert not list(tmp_path.iterdir())


def test_token_override_fixes_a_vocabulary_collision(shared_fixtures, sd1):
    c = add_concept(sd1, emb("a1111-png/test_embedding.png", shared_fixtures), token="<rick-ti>")
    try:
        assert sd1.concepts["<rick-ti>"] is c and c.n_vectors == 8
    finally:
        remove_concept(sd1, "<rick-ti>")


def test_failed_batch_loads_nothing(shared_fixtures, sd1):
    before = snapshot(sd1)
    with pytest.raises(BadInput, match="Git LFS"):
        add_concepts(sd1, [emb("sd-concepts/moebius.bin", shared_fixtures),
                           emb("broken/lfs-pointer-learned_embeds.safetensors", shared_fixtures)])
    assert_unchanged(sd1, before)


def test_synthetic_errors(tmp_path, tiny):
    before = snapshot(tiny)
    cases = {
        "empty": (b"", "empty"),
        "not an embedding": (b"hello, world\n" * 10, "not an embedding file"),
        "truncated safetensors": (b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":", "corrupt"),
    }
    for name, (data, words) in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        with pytest.raises(BadInput, match=words):
            add_concept(tiny, str(path))
    bad = {"many keys": {"a": torch.zeros(32), "b": torch.zeros(32)}, "nan": {"<n>": torch.full((32,), float("nan"))},
           "ints": {"<i>": torch.zeros(32, dtype=torch.long)}, "3-d": {"<d>": torch.zeros(1, 1, 32)}}
    for name, obj in bad.items():
        with pytest.raises(BadInput):
            add_concept(tiny, save_pt(tmp_path / f"{name}.pt", obj))
    with pytest.raises(BadInput, match="--token needs exactly one"):
        add_concepts(tiny, [str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], token="<t>")
    with pytest.raises(BadInput, match="SD 1.x"):  # a 768-wide file on the 32-wide model
        add_concept(tiny, save_pt(tmp_path / "wide.pt", {"<w>": torch.zeros(768)}))
    assert_unchanged(tiny, before)


def test_token_added_by_other_code_is_not_taken_over(tmp_path, tiny_dir):
    from sd_styles.models import load_model

    model = load_model(str(tiny_dir), device="cpu", dtype="fp32")
    model.pipe.tokenizer.add_tokens(["<theirs>"])
    model.pipe.text_encoder.resize_token_embeddings(len(model.pipe.tokenizer))
    before = snapshot(model)
    with pytest.raises(BadInput, match="other code"):
        add_concept(model, save_pt(tmp_path / "t.pt", {"<theirs>": vectors(1, 32)}))
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------- loading, reloading, swapping

def _ids(model, tokens):
    return [model.pipe.tokenizer.convert_tokens_to_ids(t) for t in tokens]


def test_multi_vector_tokens_expand_as_diffusers_does(tmp_path, tiny):
    weight = lambda: tiny.pipe.text_encoder.get_input_embeddings().weight  # noqa: E731 - resized on load
    vec = vectors(3, 32, seed=1)
    path = save_pt(tmp_path / "mixed.pt", {"string_to_param": {"*": vec}, "name": "Mixed Case-Style"})
    c = add_concept(tiny, path)
    try:
        assert c.tokens == ["Mixed Case-Style", "Mixed Case-Style_1", "Mixed Case-Style_2"]
        prompt = tiny.pipe.maybe_convert_prompt(["a Mixed Case-Style cat"], tiny.pipe.tokenizer)[0]
        ids = tiny.pipe.tokenizer(prompt).input_ids
        slots = _ids(tiny, c.tokens)
        assert [i for i in ids if i in slots] == slots           # all three vectors, in order
        assert torch.equal(weight()[slots], vec)
    finally:
        remove_concept(tiny, c.token)


def test_reload_and_swap_reuse_slots(tmp_path, tiny):
    a = save_pt(tmp_path / "a.pt", {"<style-a>": vectors(1, 32, seed=2)[0]})
    a2 = save_pt(tmp_path / "a2.pt", {"<style-a>": vectors(1, 32, seed=3)[0]})
    b = save_pt(tmp_path / "b.pt", {"string_to_param": {"*": vectors(4, 32, seed=4)}, "name": "<style-b>"})
    add_concept(tiny, a)
    size = len(tiny.pipe.tokenizer)
    ids = _ids(tiny, ["<style-a>"])
    add_concept(tiny, a)                          # the same concept again: no "already in vocabulary"
    add_concept(tiny, a2)                         # another file, same token: replaces it in place
    assert len(tiny.pipe.tokenizer) == size and _ids(tiny, ["<style-a>"]) == ids
    assert torch.equal(tiny.pipe.text_encoder.get_input_embeddings().weight[ids[0]], vectors(1, 32, seed=3)[0])
    for _ in range(3):                            # swapping back and forth never grows the vocabulary
        remove_concept(tiny, "<style-a>")
        add_concept(tiny, b)
        remove_concept(tiny, "<style-b>")
        add_concept(tiny, a)
    assert len(tiny.pipe.tokenizer) == size + 4
    assert list(tiny.concepts) == ["<style-a>"]
    assert tiny.pipe.text_encoder.get_input_embeddings().weight.shape[0] >= len(tiny.pipe.tokenizer)
    remove_concept(tiny, "<style-a>")


def test_remove_makes_the_token_carry_nothing(tmp_path, tiny):
    from sd_styles.rendering import make_recipe

    c = add_concept(tiny, save_pt(tmp_path / "r.pt", {"<gone>": vectors(1, 32, seed=5)[0]}))
    assert make_recipe(tiny, "a <gone> cat", steps=1).concepts[0].sha256 == c.sha256
    remove_concept(tiny, "<gone>")
    assert "<gone>" not in tiny.concepts
    assert make_recipe(tiny, "a <gone> cat", steps=1).concepts == ()
    assert not tiny.pipe.text_encoder.get_input_embeddings().weight[_ids(tiny, ["<gone>"])].any()
    with pytest.raises(BadInput, match="no concept"):
        remove_concept(tiny, "<gone>")


def test_fewer_vectors_under_a_token_with_spare_slots_is_refused(tmp_path, tiny):
    add_concept(tiny, save_pt(tmp_path / "n3.pt", {"<n>": vectors(3, 32)}))
    remove_concept(tiny, "<n>")
    before = snapshot(tiny)
    with pytest.raises(BadInput, match="spare slot '<n>_1'"):  # diffusers' expansion would still add <n>_1, <n>_2
        add_concept(tiny, save_pt(tmp_path / "n1.pt", {"<n>": vectors(1, 32)}))
    assert_unchanged(tiny, before)


def test_tokens_that_would_join_another_concepts_expansion_are_refused(tmp_path, tiny):
    add_concept(tiny, save_pt(tmp_path / "p.pt", {"<p>": vectors(2, 32)}))  # <p>, <p>_1
    try:
        before = snapshot(tiny)
        with pytest.raises(BadInput, match="already used by the concept '<p>'"):
            add_concept(tiny, save_pt(tmp_path / "p1.pt", {"<p>_1": vectors(1, 32)}))
        with pytest.raises(BadInput, match="would pull '<p>_2'"):
            add_concept(tiny, save_pt(tmp_path / "p2.pt", {"<p>_2": vectors(1, 32)}))
        with pytest.raises(BadInput, match="already a word"):
            add_concept(tiny, save_pt(tmp_path / "w.pt", {"a": vectors(1, 32)}))
        assert_unchanged(tiny, before)
    finally:
        remove_concept(tiny, "<p>")


def test_loading_leaves_the_global_rng_alone(tmp_path, tiny):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    c = add_concept(tiny, save_pt(tmp_path / "rng.pt", {"<rng-new-token>": vectors(2, 32)}))  # grows the matrix
    assert torch.equal(torch.rand(3), expected)
    remove_concept(tiny, c.token)


# ------------------------------------------------------------------------------------------------- the hub

def _cache_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay files out as huggingface_hub's cache does: refs/main -> snapshots/<commit>/<file>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / name).write_bytes(data)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_id_loads_offline_from_the_cache(shared_fixtures, hf_cache, sd1):
    data = (shared_fixtures / "embeddings/sd-concepts/gta5-artwork.bin").read_bytes()
    _cache_repo(hf_cache, "sd-concepts-library/gta5-artwork",
                {"learned_embeds.bin": data, "token_identifier.txt": b"<gta5-artwork>"})
    c = add_concept(sd1, "sd-concepts-library/gta5-artwork")
    try:
        assert (c.source, c.token, c.n_vectors) == ("sd-concepts-library/gta5-artwork", "<gta5-artwork>", 1)
        assert c.sha256 == "1e58b1a7e49aaf5122d2959a248c2e73d66da7e858871676a7094bdfb1fb962f"
        assert Path(c.path).is_relative_to(hf_cache)
    finally:
        remove_concept(sd1, c.token)


def test_hub_repo_with_only_safetensors_and_token_file(hf_cache, tiny):
    from safetensors.torch import save as st_save

    _cache_repo(hf_cache, "sd-concepts-library/easy", {
        "learned_embeds.safetensors": st_save({"emb_params": vectors(2, 32)}), "token_identifier.txt": b"<easy>\n"})
    c = add_concept(tiny, "sd-concepts-library/easy")
    assert (c.token, c.n_vectors, c.format) == ("<easy>", 2, "emb_params")
    remove_concept(tiny, c.token)


def test_hub_not_cached_and_offline(hf_cache, tiny, capsys):
    before = snapshot(tiny)
    with pytest.raises(BadInput, match="not in the local Hugging Face cache"):
        add_concept(tiny, "sd-concepts-library/not-downloaded")
    assert_unchanged(tiny, before)
    assert "offline" in cli_error(capsys, ["concepts", "inspect", "sd-concepts-library/not-downloaded"])


def _hub_error(kind: str):
    """A stand-in for huggingface_hub.hf_hub_download that fails as the online hub would."""
    import httpx2
    from huggingface_hub import errors

    response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/x"))
    exc = {"no repo": errors.RepositoryNotFoundError("Repository Not Found", response=response),
           "no file": errors.RemoteEntryNotFoundError("Entry Not Found", response=response),
           "network": ConnectionError("connection reset")}[kind]

    def download(repo_id, filename, **_):
        raise exc
    return download


@pytest.mark.parametrize("kind,words", [("no repo", "no such hub repo"), ("no file", "has no learned_embeds"),
                                        ("network", "unreachable")])
def test_hub_failures_online(monkeypatch, tiny, capsys, kind, words):
    import huggingface_hub

    from sd_styles import hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _hub_error(kind))
    monkeypatch.setattr(hub, "local_only", lambda: False)  # as if the hub answered the probe
    before = snapshot(tiny)
    with pytest.raises(BadInput, match=words):
        add_concept(tiny, "sd-concepts-library/some-style")
    assert_unchanged(tiny, before)
    assert words in cli_error(capsys, ["concepts", "inspect", "sd-concepts-library/some-style"])


def test_bare_tensor_takes_the_file_name(tmp_path):
    c = read_concept(save_pt(tmp_path / "my-tensor.pt", vectors(3, 32)))
    assert (c.embedding.format, c.token, c.token_origin, c.embedding.n_vectors) == ("tensor", "my-tensor", "file name", 3)


def test_inspect_subprocess_reads_the_hub_cache_from_the_environment(shared_fixtures, tmp_path):
    cache = tmp_path / "cache"
    _cache_repo(cache, "sd-concepts-library/moebius",
                {"learned_embeds.bin": (shared_fixtures / "embeddings/sd-concepts/moebius.bin").read_bytes()})
    proc = subprocess.run([sys.executable, "-m", "sd_styles", "concepts", "inspect", "sd-concepts-library/moebius"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    assert (info["token"], info["format"], info["n_vectors"], info["width"], info["fits"]) == \
        ("<moebius>", "sd-concepts", 1, 768, "SD 1.x")
    assert info["sha256"] == "ff8da3d4cbeb09ee7e0a6ef8b0dc647b31c23580678ec2f5eee0e8d5f087c29d"
    assert Path(info["path"]).is_relative_to(cache)


# ------------------------------------------------------------------------------------------------ catalog

def test_catalog_defaults_and_entries():
    from sd_styles.catalog import default_styles, load_catalog

    styles = load_catalog()
    assert [s.name for s in default_styles()] == \
        ["gta5-artwork", "moeb-style", "line-art", "dr-strange", "hitokomoru-style-nao"]
    assert len(styles) >= 15 and len({s.name for s in styles}) == len(styles)
    for s in styles:
        assert s.concept == f"sd-concepts-library/{s.name}"


def test_catalog_tokens_match_the_real_files(shared_fixtures):
    from sd_styles.catalog import load_catalog

    checked = 0
    for s in load_catalog():
        local = shared_fixtures / "embeddings/sd-concepts" / f"{s.name}.bin"
        if not local.exists():
            local = shared_fixtures / "embeddings/sd-concepts" / s.name
        if local.exists() and s.token:
            assert read_concept(str(local)).token == s.token, s.name
            checked += 1
    assert checked >= 10


def test_catalog_errors(tmp_path):
    from sd_styles.catalog import load_catalog

    bad = tmp_path / "bad.toml"
    for text, words in [("[[style]]\nname = 'x'\n", "concept"), ("[[style]]\nname='x'\nconcept='a/x'\ncolour=1\n",
                        "unknown keys"), ("nope = [", "not valid TOML"), ("", "no \\[\\[style")]:
        bad.write_text(text)
        with pytest.raises(BadInput, match=words):
            load_catalog(bad)
    with pytest.raises(BadInput, match="not found"):
        load_catalog(tmp_path / "missing.toml")


# --------------------------------------------------------------------------------------------- inspect JSON

def test_inspect_prints_json_only(shared_fixtures, capsys):
    assert cli.main(["concepts", "inspect", emb("a1111/badhandv4.pt", shared_fixtures), "--token", "<bh>"]) == 0
    out, err = capsys.readouterr()
    info = json.loads(out)
    assert (info["format"], info["token"], info["file_token"], info["n_vectors"], info["width"]) == \
        ("a1111", "<bh>", "badhandv3", 6, 768)
    assert info["tokens"] == ["<bh>"] + [f"<bh>_{i}" for i in range(1, 6)]
    assert len(info["sha256"]) == 64 and info["source"].endswith("badhandv4.pt")
