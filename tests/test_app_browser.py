"""End to end in a real browser: Playwright (sync API) driving Debian's chromium against the app on the tiny model.

Skips with the reason when /usr/bin/chromium or the playwright package is missing (`.ci/run` installs both).
Playwright's own browser download does not work offline, so the system chromium is launched directly.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no browser at {CHROMIUM} (Debian: apt-get install chromium)", allow_module_level=True)
pytest.importorskip("gradio", reason="the app needs gradio (pip install 'sd-styles[app]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the python package)")
expect = sync_api.expect

from app_helpers import evil_pickle, start_app  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    out = tmp_path_factory.mktemp("app-browser-out")
    url, demo, model = start_app(out)
    yield url, out
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(app, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    page.goto(app[0])
    expect(page.locator("#generate-btn")).to_be_visible(timeout=30_000)
    yield page
    context.close()


def _fill_generate(page, prompt: str, seed: int, steps: int) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.locator("#seed input").fill(str(seed))
    page.locator("#steps input").fill(str(steps))


def test_generate_shows_the_image_and_the_download_keeps_the_metadata(page, tmp_path):
    _fill_generate(page, "a castle on a hill", 7, 4)
    page.locator("#generate-btn").click()
    image = page.locator("#gallery img").first
    expect(image).to_be_visible(timeout=60_000)
    expect(page.locator("#status")).to_contain_text("Done 1 of 1", timeout=10_000)

    with page.expect_download() as download:
        page.locator("#files a[download]").first.click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    with Image.open(saved) as im:
        im.load()
        assert im.format == "PNG" and im.size == (64, 64)
        assert im.info["parameters"].startswith("a castle on a hill\n") and "Seed: 7," in im.info["parameters"]
        assert "sd-styles" in im.info  # the full recipe travels too
    # the gallery itself serves the same bytes (not a WebP re-encoding)
    served = page.request.get(image.get_attribute("src"))
    assert served.ok and served.body() == saved.read_bytes()

    shot = tmp_path / "app-generate.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] >= 1000
    print(f"screenshot: {shot}")


def test_stop_interrupts_within_a_step(page):
    _fill_generate(page, "a long night", 3, 1000)
    page.locator("#generate-btn").click()
    expect(page.locator("#status")).to_contain_text("step", timeout=60_000)  # sampling has begun
    started = time.monotonic()
    page.locator("#stop-btn").click()
    expect(page.locator("#status")).to_contain_text("Stopped", timeout=10_000)
    waited = time.monotonic() - started
    assert waited < 5, f"Stop took {waited:.1f}s"
    print(f"Stop reported after {waited:.2f}s")
    page.wait_for_timeout(1000)   # nothing arrives later to overwrite it (Stop's own reply once could)
    expect(page.locator("#status")).to_contain_text("Stopped", timeout=100)
    text = page.locator("#status").inner_text()
    assert "0 image(s) kept" in text
    # the app is free again: Ctrl+Enter in the prompt box runs the next job
    page.locator("#steps input").fill("2")
    page.get_by_label("Prompt", exact=True).press("Control+Enter")
    expect(page.locator("#status")).to_contain_text("Done 1 of 1", timeout=60_000)
    # 🎲 sets -1 (random); ♻️ reads the seed back from the gallery image
    page.locator("#seed-random").click()
    expect(page.locator("#seed input")).to_have_value("-1")
    page.locator("#seed-reuse").click()
    expect(page.locator("#seed input")).to_have_value("3")


def test_crafted_pickle_upload_is_refused_and_runs_nothing(page, tmp_path):
    marker = tmp_path / "pwned"
    evil = evil_pickle(tmp_path / "style.pt", marker)
    _fill_generate(page, "a <x> cat", 1, 2)
    page.locator("#uploads input[type=file]").set_input_files(str(evil))
    # the file row's cell is named "style.pt"; its text may render stem and suffix apart ("style .pt")
    expect(page.locator("#uploads").get_by_role("cell", name="style.pt")).to_be_visible(timeout=30_000)
    page.locator("#generate-btn").click()
    expect(page.get_by_text("refused", exact=False).first).to_be_visible(timeout=30_000)
    assert not marker.exists()
    expect(page.locator("#gallery img")).to_have_count(0)


def test_png_info_reads_sends_and_rerenders(page, app, tmp_path):
    from sd_styles.metadata import read_document

    _fill_generate(page, "a red boat", 11, 3)
    page.locator("#generate-btn").click()
    expect(page.locator("#status")).to_contain_text("Done 1 of 1", timeout=60_000)
    [made] = [p for p in Path(app[1]).glob("sessions/*/a-red-boat-s11-*.png")]

    _fill_generate(page, "something else", 99, 9)  # Send to Generate must put the image's values back
    page.get_by_role("tab", name="PNG info").click()
    page.locator("#png-in input[type=file]").set_input_files(str(made))
    expect(page.locator("#png-parameters textarea")).to_have_value(read_text(made), timeout=30_000)
    page.locator("#png-rerender").click()
    expect(page.locator("#png-status")).to_contain_text("identical to the original", timeout=60_000)

    page.locator("#png-send").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a red boat", timeout=10_000)
    expect(page.locator("#seed input")).to_have_value("11")
    expect(page.locator("#steps input")).to_have_value("3")
    assert read_document(made)["recipe"]["seed"] == 11


def read_text(path: Path) -> str:
    with Image.open(path) as im:
        im.load()
        return im.info["parameters"]
