"""`python app.py` as a process: Ctrl-C and `kill` close it in one line leaving no temporary file behind,
user errors are one console line each, a port in use is one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.utils import Status

import app
from dino_seg.app.config import ASSETS
from ports import free_port

REPO = Path(__file__).resolve().parent.parent


def _start(tiny_vit_weights: Path, base: Path) -> tuple[subprocess.Popen, str, Path]:
    (base / "tmp").mkdir()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(base / "gradio"),
           "TMPDIR": str(base / "tmp"), "OMP_NUM_THREADS": "1"}
    port = free_port()
    log = base / "app.log"
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--pretrained_weights", str(tiny_vit_weights),
                             "--device", "cpu", "--port", str(port)], cwd=base, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240  # a loaded 2-core machine (the whole suite) starts it slowly
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return proc, url, log
        except OSError:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130)])  # SIGTERM (exit 0): tests/test_app_e2e.py
def test_ctrl_c_closes_the_app_in_one_line_and_removes_its_files(tiny_vit_weights, tmp_path, signum, code):
    proc, url, log = _start(tiny_vit_weights, tmp_path)
    try:
        client = Client(url, verbose=False)
        client.predict(handle_file(str(ASSETS / "images" / "blackswan.jpg")), None, 128, 0.6, api_name="/attention")
        not_an_image = tmp_path / "notes.png"
        not_an_image.write_text("not an image")
        with pytest.raises(Exception, match="notes.png: not an image file"):
            client.predict(handle_file(str(not_an_image)), None, 128, 0.6, api_name="/attention")
        cache = tmp_path / "gradio"
        assert [p for p in cache.rglob("*") if p.is_file()]  # uploads and outputs were cached
        assert len(list(cache.glob("dino-seg-app-uploads-*"))) == 1  # in the app's own folder of Gradio's root
        assert list((tmp_path / "tmp").glob("dino-seg-app-*"))
        # Interrupted during a video job: the job stops between two frames, the process ends cleanly
        # (ending it under a model call aborted it: "terminate called without an active exception").
        video = client.submit("DAVIS sequence", "", "blackswan", None, None, None, None, 12, 480,
                              api_name="/propagate")
        deadline = time.monotonic() + 60
        while video.status().code != Status.PROGRESS and not video.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signum)
        assert proc.wait(timeout=150) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert "Traceback" not in output
    # The user error is one console line, without the upload's path in Gradio's cache.
    assert [line for line in output.splitlines() if "not an image" in line] == [
        "run_attention: notes.png: not an image file (expected PNG, JPEG, BMP, TIFF or WebP)"]
    if signum == signal.SIGINT:
        assert output.splitlines()[-1] == "interrupted: the app is closed and its temporary files are removed"
    assert "(python app.py --share adds a public gradio.live link)" in output and "launch()" not in output
    # Nothing is left: Gradio's cached files of the page and their folders, and the scratch folder.
    assert [p for p in cache.rglob("*") if p.is_file() or (p.is_dir() and len(p.name) == 64)] == []
    assert list(cache.glob("dino-seg-app-uploads-*")) == []  # the app's own upload folder goes too
    assert list((tmp_path / "tmp").glob("dino-seg-app-*")) == []


def test_a_port_in_use_is_one_line(tiny_vit_weights, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = app.main(["--pretrained_weights", str(tiny_vit_weights), "--device", "cpu", "--port", str(port)])
    assert code == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot serve on 127.0.0.1:{port}: the port is in use; pass another --port\n"
