"""Serving the page: the queue, the launch options, and a shutdown (Ctrl-C, kill) that leaves no file behind."""

from __future__ import annotations

import shutil
import signal
import sys
import threading

import gradio as gr

from . import jobs
from .attention import example_images
from .config import ASSETS
from .errors import one_line
from .scratch import SCRATCH, VIEWS, cached_files, remove_cached_files

# Plain system font stacks: the page must not fetch web fonts (the app often runs offline).
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])
CSS = """
#weights-banner {border-left: 4px solid #d97706; padding-left: 12px;}
#weights-banner:empty {display: none;}
"""


JOB_GRACE_S = 120  # the longest step of a job (one attention pass or one video frame) on a slow CPU


def queue(demo: gr.Blocks) -> gr.Blocks:
    """The request queue: two requests at a time (the video tab's jobs one at a time in their own queue)."""
    return demo.queue(default_concurrency_limit=2, max_size=64)


def interrupted() -> int:
    """Ctrl-C's one line and exit code."""
    print("interrupted: the app is closed and its temporary files are removed", file=sys.stderr)
    return 130


def started_line(host: str, port: int, share: bool) -> str:
    """What the console says once the page is served (instead of Gradio's hint about `launch()` arguments)."""
    shown = f"[{host}]" if ":" in host else host
    return (f"* Running on http://{shown}:{port}" + ("" if share else " (python app.py --share adds a public "
                                                        "gradio.live link)") + "; Ctrl-C stops the app")


def serve(demo: gr.Blocks, host: str, port: int, share: bool = False, upload_dir: str | None = None) -> int:
    """Serve `demo` until Ctrl-C (exit code 130) or SIGTERM (0), then close it and remove its scratch folder, the
    files Gradio cached for it and its own upload folder; a port that cannot be opened is one line and exit
    code 1."""
    stop, signals = threading.Event(), []
    allowed = [str(ASSETS)] + [p for p in example_images() if not p.startswith(str(ASSETS))]
    try:
        try:
            queue(demo).launch(server_name=host, server_port=port, share=share, show_error=True, ssr_mode=False,
                               allowed_paths=allowed, theme=THEME, css=CSS, footer_links=["gradio", "settings"],
                               prevent_thread_lock=True, quiet=True)
        except OSError as err:
            reason = "in use" if "empty port" in str(err) else f"unavailable ({one_line(err)})"
            print(f"error: cannot serve on {host}:{port}: the port is {reason}; pass another --port", file=sys.stderr)
            return 1
        print(started_line(host, demo.server_port or port, share), flush=True)
        for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C and `kill` close the page the same way
            signal.signal(signum, lambda s, _: (signals.append(s), stop.set()))
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:  # Ctrl-C while the server starts
        signals.append(signal.SIGINT)
    finally:
        # Running jobs end first (a long one between two steps): the process must not end under a model call,
        # and their outputs must be cached before the clean-up.
        if not jobs.close(timeout=JOB_GRACE_S):
            print(f"warning: {jobs.running()} request(s) still running after {JOB_GRACE_S} s", file=sys.stderr)
        files = cached_files(demo)  # closing the page makes Gradio forget (and only partly delete) them
        demo.close(verbose=False)
        remove_cached_files(files | cached_files(demo))
        SCRATCH.cleanup()
        VIEWS.cleanup()
        if upload_dir:
            shutil.rmtree(upload_dir, ignore_errors=True)
        jobs.reopen()
    return interrupted() if signal.SIGINT in signals else 0
