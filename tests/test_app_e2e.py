"""End to end: `python app.py` on a free local port, driven in Debian's Chromium through Playwright."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import torch

from dino_seg import davis, metrics
from dino_seg.models import build_backbone
from dino_seg.video import _video_codecs
from ports import free_port

# .ci/run installs Chromium and exports its path in DINO_SEG_CHROMIUM; elsewhere the chromium on PATH.
CHROMIUM = os.environ.get("DINO_SEG_CHROMIUM") or shutil.which("chromium") or ""
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "assets" / "davis"
# No browser download (impossible offline): Debian's Chromium, with its background network traffic off.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.slow,
    # In CI a missing browser fails (the fixture below) instead of skipping silently.
    pytest.mark.skipif(not ON_CI and not Path(CHROMIUM).is_file(),
                       reason="no Chromium (apt-get install chromium, or set DINO_SEG_CHROMIUM to its path)"),
]


def _results_folder(out: Path) -> Path:
    """An eval.davis-style folder whose predictions are the bundled ground truth (so J&F is exactly 1)."""
    shutil.copytree(davis.annotation_dir(BUNDLED, "blackswan"), out / "blackswan")
    metrics.write_csvs(metrics.score_results(out, BUNDLED), out)
    return out


def _train_folder(run: Path) -> Path:
    run.mkdir()
    records = [{"it": it, "epoch": it // 4, "loss": 8 - 0.3 * it, "lr": 1e-4, "wd": 0.04, "momentum": 0.996,
                "teacher_temp": 0.04, "teacher_entropy": 5.0, "kl": 0.4} for it in range(8)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "log.txt").write_text("".join(json.dumps({"train_loss": 7.0 - e, "epoch": e}) + "\n" for e in range(2)))
    torch.manual_seed(2)
    torch.save({"teacher": build_backbone("vit_tiny", 16).state_dict(), "epoch": 2}, run / "checkpoint.pth")
    return run


def open_tab(page, name: str) -> None:
    """Click a tab until the page shows it: a click that lands before the page's scripts have
    finished starting up (slow on a loaded machine) is lost, and the tab's controls stay hidden."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    tab = page.get_by_role("tab", name=name)
    for _ in range(30):
        tab.click()
        try:
            page.wait_for_function(
                "name => [...document.querySelectorAll('[role=tab]')].some("
                "t => t.innerText.trim() === name && t.getAttribute('aria-selected') === 'true')",
                arg=name, timeout=2_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the {name} tab did not open")


@pytest.fixture(scope="module")
def server(tiny_vit_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("app")
    results = _results_folder(base / "results")
    run = _train_folder(base / "run")
    port = free_port()
    tmp = base / "tmp"  # the app's own temporary files go here, so that the test sees what it leaves behind
    tmp.mkdir()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(base / "gradio"),
           "TMPDIR": str(tmp)}
    log = open(base / "app.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--pretrained_weights", str(tiny_vit_weights), "--device", "cpu",
         "--host", "127.0.0.1", "--port", str(port), "--results_dir", str(results), "--train_dir", str(run)],
        cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{(base / 'app.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer within 120 s:\n{(base / 'app.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    # SIGTERM stops the app like Ctrl-C (but exits 0): its scratch folder and Gradio's files of the page are gone.
    assert proc.returncode == 0, (base / "app.log").read_text()[-3000:]
    assert list(tmp.glob("dino-seg-app-*")) == []
    assert [p for p in (base / "gradio").rglob("*") if p.is_file()] == []


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"CI=true but no Chromium at {CHROMIUM or 'DINO_SEG_CHROMIUM (unset)'}: .ci/run installs it "
                    "and exports DINO_SEG_CHROMIUM")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.external = []  # requests that leave this machine: the page must make none
    page.on("request", lambda r: page.external.append(r.url)
            if r.url.startswith("http") and not r.url.startswith(server) else None)
    page.goto(server)
    page.wait_for_selector("#attention-run", timeout=60_000)
    yield page
    assert page.external == []
    context.close()


def test_attention_tab_shows_maps_masks_and_downloads(page):
    page.wait_for_function("document.querySelector('#weights-banner').innerText"
                           ".includes('Weights: vit_tiny16.pth (vit_tiny/16) on cpu')", timeout=30_000)
    page.locator("#attention-examples button").first.click()
    page.locator("#attention-image img").wait_for(timeout=30_000)
    page.click("#attention-run")
    page.wait_for_function("document.querySelectorAll('#mask-gallery img').length === 4", timeout=60_000)
    assert page.locator("#heat-gallery img").count() == 3  # vit_tiny: 3 heads, and the mean map's mask
    assert "3 heads" in page.locator("#attention-note").inner_text()
    files = page.locator("#attention-downloads").inner_text().replace("\n", "")
    assert "masks_th0.60_png.zip" in files and "masks_th0.60.npy" in files and "attention.npy" in files
    # A new threshold refreshes the masks from the cached attention.
    threshold = page.locator("#attention-threshold input[type=number]")
    threshold.fill("0.3")
    threshold.press("Enter")
    page.wait_for_function("document.querySelector('#attention-downloads').innerText.replace(/\\n/g, '')"
                           ".includes('masks_th0.30.npy')", timeout=30_000)
    assert page.locator("#mask-gallery img").count() == 4


def test_attention_tab_discovery_selector(page):
    page.locator("#attention-examples button").first.click()
    page.locator("#attention-image img").wait_for(timeout=30_000)
    page.click("#attention-run")
    page.wait_for_function("document.querySelector('#discover-note').innerText.includes('TokenCut')",
                           timeout=60_000)
    assert page.locator("#discover-objects img").count() == 1 and page.locator("#discover-scores img").count() == 1
    # Another method comes from the cached forward pass, with its own objects and downloads.
    page.locator("#discover-method label", has_text="MaskCut").click()
    page.wait_for_function("document.querySelector('#discover-note').innerText.includes('MaskCut')",
                           timeout=30_000)
    files = page.locator("#discover-downloads").inner_text().replace("\n", "")
    assert "boxes.json" in files and "masks.npy" in files


def test_video_tab_propagates_the_bundled_example(page):
    open_tab(page, "Video")
    # The sequence list comes from the bundled DAVIS root when the page loads.
    page.wait_for_function("document.querySelector('#video-sequence input').value === 'blackswan'",
                           timeout=30_000)
    page.locator("#video-first img").wait_for(timeout=30_000)
    frames = page.locator("#video-frames input[type=number]")
    frames.fill("4")
    frames.press("Enter")
    page.locator("#video-short-side").get_by_label("240").check()
    page.click("#video-run")
    page.wait_for_function("document.querySelector('#video-note').innerText.includes('4 frames')", timeout=90_000)
    note = page.locator("#video-note").inner_text()
    assert "J&F" in note
    page.locator("#video-frame img").wait_for(timeout=30_000)
    # The page's server runs this venv's OpenCV: the branch is the build's (both are forced in test_app_video).
    assert ("animated GIF" in note) == (not _video_codecs())
    if not _video_codecs():  # this OpenCV build writes no browser codec: the GIF shows in the frame view
        assert page.evaluate("document.querySelector('#video-frame img').src").endswith(".gif")
    else:  # the overlaid video (OpenCV's VP8 output) plays in Chromium
        page.wait_for_function("(() => { const v = document.querySelector('#video-out video');"
                               " return v && v.readyState >= 1 && v.duration > 0; })()", timeout=60_000)
        assert page.evaluate("document.querySelector('#video-out video').error") is None


def test_video_tab_makes_the_attention_video(page):
    open_tab(page, "Video")
    page.wait_for_function("document.querySelector('#video-sequence input').value === 'blackswan'",
                           timeout=30_000)
    page.locator("#video-mode").get_by_label("Attention video").check()
    page.locator("#video-attention-run").wait_for(state="visible", timeout=30_000)
    assert not page.locator("#video-run").is_visible()  # propagation's button and inputs step aside
    frames = page.locator("#video-frames input[type=number]")
    frames.fill("2")
    frames.press("Enter")
    page.locator("#video-short-side").get_by_label("240").check()
    page.click("#video-attention-run")
    for out in ("#video-attention-out", "#video-attention-masks"):
        page.wait_for_function(f"(() => {{ const v = document.querySelector('{out} video');"
                               " return v && v.readyState >= 1 && v.duration > 0; })()", timeout=90_000)
        assert page.evaluate(f"document.querySelector('{out} video').error") is None
    assert "2 frames" in page.locator("#video-attention-note").inner_text()


def test_non_image_upload_gets_a_one_line_message(page, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("not an image")
    page.locator("#attention-image input[type=file]").set_input_files(str(fake))
    page.click("#attention-run")
    toast = page.get_by_text("holiday.png: not an image file")
    toast.wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
    # The next successful run closes the error toast (Gradio would keep it until closed by hand).
    page.locator("#attention-examples button").first.click()
    page.locator("#attention-image img").wait_for(timeout=30_000)
    page.click("#attention-run")
    page.wait_for_function("document.querySelector('#discover-note').innerText.includes('TokenCut')",
                           timeout=60_000)
    toast.wait_for(state="detached", timeout=30_000)


def test_uploaded_video_with_a_mask_drawn_on_its_first_frame(page, tmp_path):
    # Whatever this OpenCV can write: the server decodes the upload with OpenCV. Motion-JPEG AVI needs no
    # codec library (OpenCV writes it itself), so one of them always works.
    for fourcc, suffix in (("VP80", ".webm"), ("mp4v", ".mp4"), ("MJPG", ".avi")):
        video = tmp_path / f"swan{suffix}"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*fourcc), 10, (320, 180))
        if writer.isOpened():
            break
    for frame in davis.frame_paths(BUNDLED, "blackswan")[:3]:
        writer.write(cv2.resize(cv2.imread(str(frame)), (320, 180), interpolation=cv2.INTER_AREA))
    writer.release()
    open_tab(page, "Video")
    page.get_by_label("Uploaded video").check()
    page.locator("#video-in input[type=file]").set_input_files(str(video))
    # Drawing before the first frame arrives would be wiped when it becomes the editor's background.
    page.wait_for_function("document.querySelector('#video-draw-hint').innerText.includes('First frame loaded')",
                           timeout=60_000)
    page.wait_for_timeout(500)
    page.locator("#video-draw").get_by_role("button", name="Brush", exact=True).click()
    page.locator("#video-draw").scroll_into_view_if_needed()  # mouse events only reach what is on screen
    box = page.locator("#video-draw").bounding_box()  # the frame fills the middle of the editor
    x, y = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.55
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 6):  # a short stroke: each move repaints the canvas, slow in software rendering
        page.mouse.move(x + 10 * k, y + 3 * (k % 2))
    page.mouse.up()
    page.get_by_label("240").check()
    page.click("#video-run")
    page.wait_for_function("document.querySelector('#video-note').innerText.includes('3 frames')", timeout=90_000)
    assert "1 object(s)" in page.locator("#video-note").inner_text()


def test_results_and_training_tabs_open_their_folders(page):
    open_tab(page, "Results")
    page.click("#results-open")
    page.wait_for_function("document.querySelector('#results-summary') && "
                           "document.querySelector('#results-summary').innerText.includes('J&F-Mean')",
                           timeout=30_000)
    assert "J&F-Mean 1.000" in page.locator("#results-summary").inner_text()
    page.locator("#results-gt img").wait_for(timeout=30_000)
    page.locator("#results-pred img").wait_for(timeout=30_000)

    open_tab(page, "Training")
    page.click("#training-open")
    page.wait_for_function("document.querySelector('#training-summary').innerText.includes('8 iteration')",
                           timeout=30_000)
    page.click("#use-checkpoint")
    page.wait_for_function("document.querySelector('#weights-banner').innerText.includes('checkpoint.pth')",
                           timeout=30_000)
    assert page.get_by_role("tab", name="Attention").get_attribute("aria-selected") == "true"
