"""Layering: the library (dino_seg) and the evaluations (eval) never import the training front-end (train),
and the library imports without Gradio (only dino_seg.app needs it)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the modules a file imports (absolute imports; relative ones stay in their package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imported_modules_sees_every_import_form(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os.path\nfrom train.main import main\ndef f():\n    import gradio as gr\n"
                      "from . import sibling\nfrom .train import x\n")
    assert imported_modules(source) == {"os", "train", "gradio"}


@pytest.mark.parametrize("package", ["dino_seg", "eval"])
def test_library_and_evaluations_never_import_train(package):
    offenders = [str(path.relative_to(ROOT)) for path in sorted((ROOT / package).rglob("*.py"))
                 if "train" in imported_modules(path)]
    assert offenders == []


def test_the_library_imports_without_gradio():
    # Every library module except the app, in a fresh interpreter: none may pull in Gradio (a large import
    # that commands and training jobs do not need).
    modules = sorted(f"dino_seg.{path.stem}" for path in (ROOT / "dino_seg").glob("*.py") if path.stem != "__init__")
    code = ("import sys, importlib\nimport dino_seg\nassert 'gradio' not in sys.modules, 'import dino_seg'\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "    assert 'gradio' not in sys.modules, name\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
