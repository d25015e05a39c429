"""Stacked batches with a recorded call shape: companions never matter, rerun and resume rebuild the shape.

The reference for "the same cell" is always the cell's own first rendering (its latents or its PNG):
rerun pads the call with throw-away copies, resume re-renders the planned call batch whole.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from helpers import pixel_diff
from PIL import Image

from sd_styles.cli import main
from sd_styles.conditioning import encode_conditioning
from sd_styles.errors import BadInput
from sd_styles.guidance import loss_histories
from sd_styles.metadata import read_document, read_recipe, save_png
from sd_styles.recipe import Guidance, LossTerm
from sd_styles.rendering import make_recipe, render, render_batch, render_padded

GUIDED = Guidance(losses=(LossTerm("blue", 3000.0),), every=1)


def final_latents(model, cells, render_fn=None, **kw):
    """The latents after the last step, (B, 4, h, w), captured with the step callback."""
    store = {}
    kw["callback"] = lambda info: store.__setitem__("x", info["latents"].clone())
    (render_fn or render_batch)(model, cells, **kw)
    return store["x"]


@pytest.mark.parametrize("guided", [False, True])
def test_companions_never_change_a_cell_at_a_fixed_shape(tiny_model, guided):
    g = GUIDED if guided else None
    cell = make_recipe(tiny_model, "a cat", seed=1, steps=2, guidance=g)
    others = [make_recipe(tiny_model, p, seed=s, steps=2, guidance=g) for p, s in (("a dog", 2), ("zz", 3), ("q", 4))]
    first = final_latents(tiny_model, [cell, others[0], others[1]], progress=False)
    again = final_latents(tiny_model, [cell, others[2], others[2]], progress=False)
    assert torch.equal(first[0], again[0])
    # rerun's way: alone, padded with throw-away copies of itself to the recorded shape (3 cells, position 0)
    padded = final_latents(tiny_model, cell, lambda m, c, **kw: render_padded(m, c, 3, 0, **kw), progress=False)
    assert torch.equal(first[0], padded[0])


def test_rerun_of_a_stacked_cell_is_identical_and_reports_it(tiny_model, tmp_path):
    recipes = [make_recipe(tiny_model, f"a house {i}", seed=10 + i, steps=2) for i in range(3)]
    results = render(tiny_model, recipes, progress=False)
    path = results[1].save(tmp_path / "cell.png")
    assert read_document(path)["rendered_with"]["call_shape"] == {"size": 3, "position": 1}
    fp = read_document(path)["rendered_with"]["fingerprint"]
    assert fp["call_batch_size"] == 3 and fp["mode"] == "stacked" and fp["device"] == "cpu" and fp["torch"]
    code, out, err = cli("rerun", str(path), "--model", str(Path(read_recipe(path).model)), "--out",
                         str(tmp_path / "again"))
    assert code == 0 and err.strip().splitlines()[-1] == "identical"
    assert pixel_diff(Image.open(out[0]), Image.open(path)) == 0


def test_rerun_names_the_conditions_an_edited_fingerprint_differs_in(tiny_model, tmp_path):
    [res] = render(tiny_model, [make_recipe(tiny_model, "a boat", seed=5, steps=2)], progress=False)
    path = res.save(tmp_path / "boat.png")
    doc = read_document(path)
    execution = doc["rendered_with"]
    assert execution["fingerprint"]["sd_styles"] == version("sd-styles")   # our own rounding changes are named too
    execution["fingerprint"].update(device="cuda", device_name="NVIDIA H100 80GB HBM3", cudnn=90100, sd_styles="0.1.0")
    with Image.open(path) as im:
        save_png(im.copy(), path, read_recipe(path), doc["loss_history"], execution)
    code, _out, err = cli("rerun", str(path), "--out", str(tmp_path / "again"))
    line = err.strip().splitlines()[-1]
    assert code == 0 and line.startswith("identical; differing conditions: ")
    assert "device: cuda -> cpu" in line and "device_name: NVIDIA H100 80GB HBM3 -> " in line and "cudnn: 90100" in line
    assert f"sd_styles: 0.1.0 -> {version('sd-styles')}" in line
    # pixels changed on disk: the report gives the measured difference
    with Image.open(path) as im:
        worse = Image.eval(im.convert("RGB"), lambda v: min(255, v + 3))
    save_png(worse, path, read_recipe(path), doc["loss_history"], execution)
    _code, _out, err = cli("rerun", str(path), "--out", str(tmp_path / "again"))
    assert err.strip().splitlines()[-1].startswith("differs by at most 3/255 (mean ")


class CallShapes:
    """The first-argument shapes a module is called with (a forward pre-hook), while the block runs."""

    def __init__(self, *modules):
        self.modules, self.shapes = modules, []

    def __enter__(self):
        self.hooks = [m.register_forward_pre_hook(lambda _m, args, kw: self.shapes.append(
            tuple((args[0] if args else next(iter(kw.values()))).shape)), with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_each_distinct_text_is_encoded_once_alone(tiny_model, tiny_sdxl_model, family):
    """2 prompts x 2 seeds + the empty negative: 3 encoder calls of one text each, not 8 (or 2 of 4)."""
    model = tiny_model if family == "sd1" else tiny_sdxl_model
    recipes = [make_recipe(model, p, seed=s, steps=2, negative_prompt="", refiner=None)
               for p in ("a cat", "a dog") for s in (1, 2)]
    pipe = model.pipe
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
    with CallShapes(*encoders) as calls:
        results = render(model, recipes, progress=False)
    assert calls.shapes == [(1, 77)] * 3 * len(encoders)
    assert results[0].execution["call_shape"] == {"size": 4, "position": 0}
    # a text's rows do not depend on the texts beside it, nor on its place: bit for bit
    mixed = encode_conditioning(model, ["zz top", "a cat", "a dog"], ["", None, "a cat"], True, 64, 64)
    alone = encode_conditioning(model, ["a cat"], [""], True, 64, 64)
    # rows [negatives; prompts] = ["", "" or zeros, "a cat", "zz top", "a cat", "a dog"]
    assert torch.equal(mixed.embeds[4], alone.embeds[1]) and torch.equal(mixed.embeds[2], alone.embeds[1])
    if family == "sdxl":
        pooled = mixed.added["text_embeds"]
        assert torch.equal(pooled[4], alone.added["text_embeds"][1]) and torch.equal(pooled[2], pooled[4])


def test_the_final_decode_is_one_image_per_call(tiny_model):
    recipes = [make_recipe(tiny_model, "a cup", seed=s, steps=2) for s in (1, 2, 3)]
    with CallShapes(tiny_model.pipe.vae.decoder) as calls:
        results = render(tiny_model, recipes, progress=False)
    assert len(calls.shapes) == 3 and all(shape[0] == 1 for shape in calls.shapes)
    assert results[2].execution["call_shape"] == {"size": 3, "position": 2}


def test_guided_loss_history_is_read_once_from_device_tensors():
    steps = [torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5])]
    assert loss_histories(steps, 2) == [[1.0, 0.5], [2.0, 1.5]]
    assert loss_histories([], 3) == [[], [], []]


def test_exact_mode_is_one_cell_per_call(tiny_model):
    recipes = [make_recipe(tiny_model, "a cup", seed=s, steps=2) for s in (1, 2)]
    exact = render(tiny_model, recipes, mode="exact", progress=False)
    alone = render(tiny_model, recipes[1:], progress=False)
    assert pixel_diff(exact[1].image, alone[0].image) == 0
    assert exact[1].execution["fingerprint"]["call_batch_size"] == 1
    with pytest.raises(BadInput, match="unknown render mode"):
        render(tiny_model, recipes, mode="fused")


# --- resume: the plan fixes the shapes ------------------------------------------------------------------

def write_run(folder: Path, model: Path, n: int = 5, guided: bool = True) -> Path:
    styles = ""
    for i in range(n):
        torch.save({f"<b-{i}>": torch.randn(32, generator=torch.Generator().manual_seed(50 + i))}, folder / f"b{i}.pt")
        styles += f'\n[[styles]]\nconcept = "b{i}.pt"\nseed = {i + 1}\n'
    guidance = '\n[guidance]\nloss = "blue"\nscale = 3000\n' if guided else ""
    path = folder / "batch.toml"
    path.write_text(f'name = "batch"\nmodel = "{model.as_posix()}"\nprompt = "a tree by {{style}}"\nsteps = 2\n'
                    f'width = 64\nheight = 64\n{styles}{guidance}', encoding="utf-8")
    return path


def cli(*argv: str) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue().splitlines(), err.getvalue()


def cells(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.glob("*.png")) if p.name != "grid.png"}


def test_resumed_cells_equal_an_uninterrupted_run_and_mixing_is_refused(tiny_dir, tmp_path):
    toml = write_run(tmp_path, tiny_dir, guided=False)
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli("run", str(toml), "--out", str(full), "--batch-size", "3")[0] == 0
    assert cli("run", str(toml), "--out", str(part), "--batch-size", "3")[0] == 0
    reference = cells(full / "batch")
    for name in sorted(reference)[1::2]:     # a "crash" lost cells 2 and 4 (one from each call batch of the plan)
        (part / "batch" / name).unlink()
    code, out, _ = cli("run", str(toml), "--out", str(part), "--batch-size", "3")
    assert code == 0 and len([p for p in out if p.endswith(".png") and "grid" not in p]) == 2
    for name, path in cells(part / "batch").items():
        assert pixel_diff(Image.open(path), Image.open(reference[name])) == 0, name
        assert read_document(path)["rendered_with"]["call_shape"] == \
            read_document(reference[name])["rendered_with"]["call_shape"]
    # another batch size would put a resumed cell in a call of another shape: refused, unless asked for
    (part / "batch" / sorted(reference)[0]).unlink()
    code, _, err = cli("run", str(toml), "--out", str(part), "--batch-size", "2")
    assert code == 2 and "call_batch_size: 3 -> 2" in err and "--allow-mixed" in err
    assert cli("run", str(toml), "--out", str(part), "--batch-size", "2", "--allow-mixed")[0] == 0


# --- memory: refused before it starts -------------------------------------------------------------------

def test_a_render_too_big_for_the_device_is_refused_up_front(tiny_dir, tmp_path):
    code, out, err = cli("generate", "a cat", "--model", str(tiny_dir), "--size", "8192x8192", "--steps", "1",
                         "--out", str(tmp_path))
    last = err.strip().splitlines()[-1]   # (the lines before it are the model loading's progress bars)
    assert code == 2 and out == [] and not list(tmp_path.iterdir())
    assert last.startswith("error: this render needs about") or "needs about" in last
    assert "GiB" in last and "at 8192x8192" in last and "available on cpu" in last and "smaller size" in last


def test_memory_estimate_grows_with_size_and_cells_per_call(tiny_model):
    from sd_styles.memory import check_fits, estimate

    small = [make_recipe(tiny_model, "a", seed=s, steps=2) for s in range(4)]
    big = [make_recipe(tiny_model, "a", seed=s, steps=2, width=128, height=128) for s in range(4)]
    assert estimate(tiny_model, small, 4).unet == 4 * estimate(tiny_model, small, 1).unet
    assert estimate(tiny_model, small, 4, mode="exact").peak == estimate(tiny_model, small, 1).peak
    assert estimate(tiny_model, big, 1).peak == 4 * estimate(tiny_model, small, 1).peak
    guided = [make_recipe(tiny_model, "a", seed=0, steps=2, guidance=GUIDED)]
    assert estimate(tiny_model, guided).guidance > 0 and check_fits(tiny_model, guided).peak > 0


@pytest.mark.parametrize("cells, guidance", [(1, None), (4, None), (1, Guidance((LossTerm("blue", 200.0),), decoder="vae"))],
                         ids=["plain", "stacked-4", "guided-vae"])
def test_memory_estimate_covers_the_measured_peak_without_refusing_what_fits(tiny_model, cells, guidance):
    """The estimate against the live-tensor peak the profiler measures (benchmarks/bench_memory.py's method).

    Below the measured peak it would let an out-of-memory crash through; far above it, it would refuse renders
    that fit (the first estimate was 2.7x high for a stacked decode). Measured here: 1.65x, 1.65x, 1.01x.
    """
    from torch.profiler import ProfilerActivity, profile

    from sd_styles.memory import estimate, live_tensor_peak

    recipes = [make_recipe(tiny_model, "a cat", seed=s, steps=1, width=128, height=128, guidance=guidance)
               for s in range(cells)]
    render(tiny_model, recipes, batch_size=cells, progress=False)   # first calls allocate outside the render
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        render(tiny_model, recipes, batch_size=cells, progress=False)
    measured = live_tensor_peak(prof)
    assert measured > 0
    assert 1.0 <= estimate(tiny_model, recipes, batch_size=cells).peak / measured <= 2.0


# --- speed switches --------------------------------------------------------------------------------------

def test_attention_is_sdpa_and_channels_last_is_opt_in_and_recorded(tiny_dir):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from sd_styles.models import load_model
    from sd_styles.speed import optimize

    model = load_model(str(tiny_dir), device="cpu", dtype="fp32")   # its own copy: optimize() changes it
    assert all(isinstance(p, AttnProcessor2_0) for p in model.pipe.unet.attn_processors.values())
    recipe = make_recipe(model, "a kite", seed=3, steps=2)
    [before] = render(model, [recipe], progress=False)
    assert before.execution["fingerprint"]["channels_last"] is False
    assert optimize(model, channels_last=True) == {"channels_last": True, "compiled": False}
    [after] = render(model, [recipe], progress=False)
    assert after.execution["fingerprint"]["channels_last"] is True
    assert pixel_diff(after.image, before.image) <= 1   # other kernels, same picture (measured here)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile on a CPU needs a C++ "
                    "compiler (g++ or $CXX) for inductor's kernels")
def test_compile_covers_the_unet_and_on_accelerators_the_loss_decode_and_is_recorded(tiny_dir, caplog):
    """`optimize(compile=True)`: the UNet runs compiled, same picture; the loss decode is compiled off the CPU."""
    import types

    from diffusers.utils.torch_utils import is_compiled_module

    from sd_styles.decoders import make_decoder
    from sd_styles.models import load_model
    from sd_styles.speed import optimize

    model = load_model(str(tiny_dir), device="cpu", dtype="fp32")   # its own copy: optimize() changes it
    guided = Guidance(losses=(LossTerm("blue", 3000.0),), decoder="vae")
    recipes = [make_recipe(model, "a kite", seed=3, steps=2), make_recipe(model, "a kite", seed=3, steps=2,
                                                                          guidance=guided)]
    eager = render(model, recipes, progress=False)
    eager_decode = make_decoder(model, "vae")
    with caplog.at_level("WARNING", logger="sd_styles.speed"):
        assert optimize(model, compile=True) == {"channels_last": False, "compiled": True}
    assert is_compiled_module(model.pipe.unet)
    assert "slower than eager" in caplog.text   # measured so on the CPU: the user is told
    compiled = render(model, recipes, progress=False)
    for before, after in zip(eager, compiled):
        assert before.execution["fingerprint"]["compiled"] is False
        assert after.execution["fingerprint"]["compiled"] is True
        assert pixel_diff(after.image, before.image) <= 2   # other kernels, same picture
    assert compiled[1].loss_history == pytest.approx(eager[1].loss_history, rel=1e-3)
    assert pixel_diff(compiled[1].image, compiled[0].image) > 0   # guidance still steers
    assert make_decoder(model, "vae") is eager_decode   # on the CPU the loss decode stays eager (measured slower)

    # on an accelerator the same model's loss decode is compiled: a stand-in whose device says so, run here
    accel = types.SimpleNamespace(pipe=model.pipe, device=torch.device("cuda"), decoders={})
    decode = make_decoder(accel, "vae", checkpoint=False)
    assert list(accel.decoders) == [("vae", False, True)]   # built compiled, cached under that state
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
    (grad,) = torch.autograd.grad(decode(z)[:, 2].mean(), z)
    (eager_grad,) = torch.autograd.grad(eager_decode(z)[:, 2].mean(), z)
    torch.testing.assert_close(decode(z), eager_decode(z), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-3, atol=1e-6)
