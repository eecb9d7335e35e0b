"""Regenerate the README's screenshots of the app (docs/screenshots/*.png), offline, in Debian's Chromium.

    python docs/make_screenshots.py                    # about 3 minutes on a 2-core CPU
    python docs/make_screenshots.py --only attention   # one tab

Random ViT-S/16 weights (no download): the pictures show the page, not what DINO learned. The Training tab
shows a short vit_tiny run with k-NN accuracy on scikit-image's photographs, made here with `python -m train`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"
SHOTS = ("attention", "video", "training")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photo_folders(root: Path) -> Path:
    """train/ and val/ ImageFolder trees of scikit-image photographs: each photograph is a class, its
    samples are random crops of it (three to train, one to validate)."""
    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
             "camera", "moon", "page", "text", "grass", "gravel", "brick"]
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for split, n in (("train", 3), ("val", 1)):
            for j in range(n):
                w, h = image.size
                x, y = rng.integers(0, max(1, w // 4)), rng.integers(0, max(1, h // 4))
                crop = image.crop((x, y, x + 3 * w // 4, y + 3 * h // 4)).resize((96, 96))
                path = root / split / name / f"{j}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                crop.save(path, quality=92)
    return root


def _training_run(work: Path) -> Path:
    data = _photo_folders(work / "photos")
    run = work / "run"
    subprocess.run([sys.executable, "-m", "train", "--arch", "vit_tiny", "--out_dim", "256", "--global_crops_size",
                    "64", "--local_crops_size", "32", "--local_crops_number", "2", "--batch_size_per_gpu", "8",
                    "--epochs", "6", "--warmup_epochs", "1", "--lr", "0.1", "--teacher_temp", "0.02",
                    "--warmup_teacher_temp", "0.02", "--drop_path_rate", "0", "--num_workers", "0", "--device",
                    "cpu", "--saveckp_freq", "3", "--data_path", str(data / "train"), "--knn_data_path", str(data),
                    "--knn_k", "5", "--output_dir", str(run)], cwd=REPO, check=True)
    return run


def _serve(work: Path, run: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(work / "gradio")}
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--pretrained_weights", "random", "--arch",
                             "vit_small", "--patch_size", "16", "--device", "cpu", "--port", str(port),
                             "--train_dir", str(run)], cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: app.py exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("error: app.py did not answer within 180 s")


def _open_tab(page, name: str) -> None:
    # A click that lands before the page's scripts have started is lost: click until the tab is selected.
    for _ in range(30):
        page.get_by_role("tab", name=name).click()
        if page.get_by_role("tab", name=name).get_attribute("aria-selected") == "true":
            return
        time.sleep(1)
    raise SystemExit(f"error: the {name} tab did not open")


def _shoot(url: str, shots: tuple[str, ...], chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#weights-banner", state="attached")
        if "attention" in shots:
            page.locator("#attention-examples button").first.click()  # the bundled blackswan frame
            page.click("#attention-run")
            page.wait_for_selector("#discover-objects img", timeout=300_000)
            page.screenshot(path=str(OUT / "attention.png"), full_page=True)
        if "video" in shots:
            _open_tab(page, "Video")
            page.get_by_label("Attention video").check()
            page.locator("#video-frames input[type=number]").fill("6")
            page.get_by_label("240").check()
            page.click("#video-attention-run")
            page.wait_for_selector("#video-attention-out video", timeout=300_000)
            time.sleep(2)  # the first frames of the looped video
            page.screenshot(path=str(OUT / "video.png"), full_page=True)
        if "training" in shots:
            _open_tab(page, "Training")
            page.click("#training-open")
            page.wait_for_function("document.querySelector('#training-summary').innerText.includes('epoch')",
                                   timeout=120_000)
            time.sleep(2)  # the plots draw after the summary
            page.screenshot(path=str(OUT / "training.png"), full_page=True)
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=SHOTS, default=list(SHOTS), help="Tabs to photograph.")
    parser.add_argument("--chromium", default=os.environ.get("DINO_SEG_CHROMIUM") or shutil.which("chromium"),
                        help="Chromium's path (default: DINO_SEG_CHROMIUM, else chromium on PATH).")
    args = parser.parse_args(argv)
    if not args.chromium:
        print("error: no Chromium: apt-get install chromium, or pass --chromium PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dino-seg-shots-") as tmp:
        work = Path(tmp)
        run = _training_run(work) if "training" in args.only else work
        proc, url = _serve(work, run)
        try:
            _shoot(url, tuple(args.only), args.chromium)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print("wrote " + ", ".join(str(OUT / f"{name}.png") for name in args.only))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
