"""The app served for real (tiny model, loopback, free port) and called through the official gradio_client."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app needs gradio (pip install 'sd-styles[app]')")
gradio_client = pytest.importorskip("gradio_client", reason="these tests call the app through gradio_client")

from app_helpers import start_app  # noqa: E402
from helpers import pixel_diff  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    out = tmp_path_factory.mktemp("app-out")
    url, demo, model = start_app(out)
    yield url, demo, model, out
    demo.close()


@pytest.fixture(scope="module")
def client(app):
    return gradio_client.Client(app[0], verbose=False)


def test_generate_endpoint_returns_the_png_that_the_cli_makes(app, client, tmp_path, capsys):
    from sd_parsers import ParserManager

    from sd_styles.cli import main
    from sd_styles.metadata import read_document

    prompt, seed = "a lighthouse at dusk, oil painting", 1234
    path = Path(client.predict(prompt=prompt, seed=seed, steps=3, api_name="/generate"))
    assert path.suffix == ".png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = ParserManager().parse(path)  # an independent reader of A1111 parameters
    assert str(info.prompts[0]) == prompt
    assert int(info.samplers[0].parameters["seed"]) == seed
    assert int(info.samplers[0].parameters["steps"]) == 3

    assert main(["generate", prompt, "--model", "tiny", "--seed", str(seed), "--steps", "3",
                 "--out", str(tmp_path / "cli")]) == 0
    [cli_path] = capsys.readouterr().out.split()
    with Image.open(path) as a, Image.open(cli_path) as b:
        assert a.size == b.size == (64, 64)
        assert pixel_diff(a.convert("RGB"), b.convert("RGB")) == 0
    assert read_document(path)["digest"] == read_document(cli_path)["digest"]  # the same recipe, not just pixels
    # and the app kept its own copy in this session's folder under --out
    assert list((app[3] / "sessions").glob(f"*/{Path(cli_path).name}"))


def test_bad_input_is_a_message_and_the_app_stays_usable(client):
    from gradio_client.exceptions import AppError

    for bad, words in [({"steps": 0}, "steps"), ({"width": 65}, "width"), ({"prompt": " "}, "prompt"),
                       ({"loss": "os:system"}, "os:system"), ({"hub_concepts": "/etc/passwd"}, "hub id")]:
        kwargs = {"prompt": "a cat", "seed": 1, "steps": 2, **bad}
        with pytest.raises(AppError) as err:
            client.predict(**kwargs, api_name="/generate")
        assert words in str(err.value) and "Traceback" not in str(err.value)
    assert Path(client.predict(prompt="a cat", seed=2, steps=2, api_name="/generate")).is_file()


def _non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_listens_on_loopback_only(app):
    url, demo, _, _ = app
    port = int(url.rsplit(":", 1)[1])
    assert demo.server_name == "127.0.0.1" and demo.share is False
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    listening = Path("/proc/net/tcp")
    if listening.is_file():  # Linux: the listening socket's local address is 127.0.0.1 (0100007F), not 0.0.0.0
        rows = [line.split() for line in listening.read_text().splitlines()[1:]]
        mine = [r[1] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]
        assert mine == [f"0100007F:{port:04X}"]
    other = _non_loopback_address()
    if other:
        with pytest.raises(OSError):
            socket.create_connection((other, port), timeout=2).close()


def test_serves_only_the_output_folder(app, client):
    url = app[0]
    secret = Path(__file__).resolve()  # a file in the working tree, outside --out
    for target in (secret, Path("/etc/passwd")):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/gradio_api/file={target}", timeout=10)
        assert err.value.code in (403, 404)
    made = Path(client.predict(prompt="a dog", seed=3, steps=2, api_name="/generate"))
    served = list((app[3] / "sessions").glob(f"*/{made.name}"))
    with urllib.request.urlopen(f"{url}/gradio_api/file={served[0]}", timeout=10) as resp:
        assert resp.read() == served[0].read_bytes()  # byte for byte: the metadata is served too


def test_launch_options_are_safe(app):
    _, demo, _, out = app
    assert demo.max_file_size is not None and demo.max_file_size <= 50 * 2**20
    assert demo.allowed_paths == [str(out.resolve())]
    assert demo.analytics_enabled is False
    assert demo.config["analytics_enabled"] is False


def test_app_command_help_and_missing_gradio(monkeypatch, capsys):
    import importlib.util

    from sd_styles.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["app", "--help"])
    assert stop.value.code == 0
    usage = capsys.readouterr().out
    for option in ("--model", "--host", "--port", "--share", "--out"):
        assert option in usage
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["app", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'sd-styles[app]'" in err and len(err.strip().splitlines()) == 1


def test_uploads_are_capped(app):
    import httpx

    url = app[0]
    small = httpx.post(f"{url}/gradio_api/upload", files={"files": ("x.bin", b"0" * 1024)}, timeout=30)
    assert small.status_code == 200
    big = httpx.post(f"{url}/gradio_api/upload", files={"files": ("x.bin", b"0" * (21 * 2**20))}, timeout=60)
    assert big.status_code == 413


def test_one_job_at_a_time(app):
    demo = app[1]
    jobs = [fn for fn in demo.fns.values() if fn.concurrency_id == "gpu"]
    assert {fn.api_name for fn in jobs} >= {"generate", "ui_generate", "compare", "png_rerender"}
    assert all(fn.concurrency_limit in (1, "default") for fn in jobs)  # queue(default_concurrency_limit=1)


@pytest.mark.slow
def test_the_app_command_serves_on_loopback_and_prints_written_paths(tmp_path):
    """`sd-styles app --model tiny` in its own process: /generate works and stdout carries only the PNG's path."""
    import os
    import subprocess
    import sys
    import time

    from app_helpers import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sd_styles", "app", "--model", "tiny", "--port", str(port),
                             "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(1)
        client = gradio_client.Client(f"http://127.0.0.1:{port}", verbose=False)
        png = Path(client.predict(prompt="a kite", seed=9, steps=2, api_name="/generate"))
        assert "Seed: 9" in Image.open(png).info["parameters"]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    [line] = out.splitlines()
    assert Path(line).name == png.name and Path(line).resolve().is_relative_to(tmp_path.resolve())
    assert "127.0.0.1" in err
