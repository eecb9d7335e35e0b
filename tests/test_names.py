"""The flag choices of dino_seg.names equal the registries they stand for, and the parsers need no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dino_seg import davis, discovery, models, names, precision, weights

REPO = Path(__file__).resolve().parents[1]


def test_names_are_the_registries():
    assert names.PRESET_NAMES == tuple(weights.PRESETS)
    assert names.ARCHS == models.ARCHS == ("vit_tiny", "vit_small", "vit_base", "resnet50")
    assert names.DISCOVERY_METHODS == discovery.METHODS == ("attention", "lost", "tokencut", "maskcut")
    assert names.PRECISIONS == precision.PRECISIONS == ("fp32", "bf16", "fp16")
    assert names.DAVIS_RESOLUTIONS == davis.RESOLUTIONS == ("480p", "Full-Resolution")


def test_davis_help_imports_no_torch():
    code = ("import sys\nfrom eval import davis\nparser = davis.get_args_parser()\n"
            "assert parser.parse_args(['--method', 'lost']).method == 'lost'\n"
            "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'cv2') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
