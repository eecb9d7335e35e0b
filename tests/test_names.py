"""The flag choices of dino_seg.names equal the registries they stand for, and the parsers need no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dino_seg import (davis, discovery, discovery_data, models, names, precision, preprocess, video, video_attention,
                      weights)

REPO = Path(__file__).resolve().parents[1]


def test_names_are_the_registries():
    assert names.PRESET_NAMES == tuple(weights.PRESETS)
    assert names.ARCHS == models.ARCHS == ("vit_tiny", "vit_small", "vit_base", "resnet50")
    assert names.DISCOVERY_METHODS == discovery.METHODS == ("attention", "lost", "tokencut", "maskcut")
    assert names.PRECISIONS == precision.PRECISIONS == ("fp32", "bf16", "fp16")
    assert names.DAVIS_RESOLUTIONS == davis.RESOLUTIONS == ("480p", "Full-Resolution")
    assert names.PREPROCESS_MODES == preprocess.PREPROCESS == ("pad", "resize")
    assert names.DISCOVERY_BENCHMARKS == tuple(discovery_data.BENCHMARKS)
    assert names.VIDEO_MASK_MODES == video_attention.MASK_MODES == ("mean", "heads")
    assert names.DEFAULT_FPS == video.DEFAULT_FPS == 30.0


# (command, the arguments a run of it needs besides its defaults, (a flag, a value, what the parser makes of it))
COMMANDS = [
    ("eval.davis", [], ("--method", "lost", "lost")),
    ("eval.attention", [], ("--precision", "bf16", "bf16")),
    ("eval.discover", [], ("--benchmark", "voc07", "voc07")),
    ("eval.video_attention", ["--input_path", "clip.mp4"], ("--masks", "heads", "heads")),
    ("eval.knn", [], ("--nb_knn", "20", [20])),
    ("eval.linear", [], ("--avgpool_patchtokens", "off", False)),
    ("train", [], ("--optimizer", "lars", "lars")),
]
PARSERS = {"train": "train.flags"}  # where a command's get_args_parser lives, when not in the module it runs
HEAVY = ("torch", "timm", "torchvision", "cv2")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("module,required,flag", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_the_flags_parse_without_torch(module, required, flag):
    parser_module = PARSERS.get(module, module)
    code = (f"import importlib, sys\nparser = importlib.import_module({parser_module!r}).get_args_parser()\n"
            f"args = parser.parse_args({[*required, *flag[:2]]!r})\n"
            f"assert getattr(args, {flag[0][2:]!r}) == {flag[2]!r}\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module,required", [c[:2] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_help_and_a_bad_flag_answer_without_torch(module, required):
    # As `python -m MODULE --help` runs it; the heavy modules are looked at when argparse exits.
    code = (f"import atexit, runpy, sys\n"
            f"atexit.register(lambda: print('heavy', sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
            f"sys.argv = [{module!r}, *sys.argv[1:]]\nrunpy.run_module({module!r}, run_name='__main__')\n")
    for arg, status, stream in (("--help", 0, "stdout"), ("--no_such_flag", 2, "stderr")):
        out = _python(code, *required, arg)
        assert out.returncode == status, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "heavy []"
        assert f"python -m {module}" in getattr(out, stream)  # the parser's own usage line
    assert "unrecognized arguments: --no_such_flag" in out.stderr
