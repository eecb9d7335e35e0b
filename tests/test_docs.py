"""The README and docs/ pages stay true: links resolve, the preset table is the registry, examples parse."""

from __future__ import annotations

import ast
import functools
import importlib
import re
import shlex
from pathlib import Path

import pytest
import torch

from dino_seg import weights
from dino_seg.models import ARCHS, PATCH_SIZES, VIT_WIDTHS, build_backbone

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

# Pages being written elsewhere: a link to one of them may land before the page does. Empty now that
# backbones.md, discovery-benchmarks.md and scale.md have landed; a page named here must still come.
PLANNED_PAGES: set[str] = set()

# The parser builder of each command the docs show (`python -m MODULE` or `torchrun ... -m MODULE`).
PARSERS = {
    "train": "train.main",
    "eval.attention": "eval.attention",
    "eval.davis": "eval.davis",
    "eval.discover": "eval.discover",
    "eval.knn": "eval.knn",
    "eval.linear": "eval.linear",
    "eval.video_attention": "eval.video_attention",
    "dino_seg.export": "dino_seg.export",
    "dino_seg.export": "dino_seg.export",
    "app.py": "app",
}

_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)\)")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation but '-' and '_' removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in text.splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(page: Path) -> list[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`]*`", "", text)  # code spans are not links
    return _LINK.findall(text)


def test_slug_follows_github() -> None:
    assert _slug("Video object segmentation on DAVIS: `python -m eval.davis`") == \
        "video-object-segmentation-on-davis-python--m-evaldavis"
    assert _slug("k-NN: `eval.knn`") == "k-nn-evalknn"
    assert _slug("Try it offline") == "try-it-offline"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else None
        if rel is None:
            broken.append(f"{target} (outside the repository)")
        elif not dest.exists():
            if rel not in PLANNED_PAGES:
                broken.append(f"{target} (no file {rel})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {rel})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_paths_outside_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text and "/work/" not in text


def test_readme_is_short_and_names_pytest() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    blocks = [body for lang, body in _FENCE.findall(text) if lang in ("bash", "")]
    assert any(re.search(r"(^|&& )pytest$", line.strip()) for body in blocks for line in body.splitlines())


def _code_spans(page: Path) -> list[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", text)]  # spans may wrap lines


def _resolve(dotted: str) -> object:
    """The object a dotted name like `dino_seg.weights.load_model` names (the longest importable module, then
    attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_code_exists(page: Path) -> None:
    """Modules, functions and files the page names in code spans exist (`dino_seg.pairing.match_objects`,
    `tests/test_models.py`): a rename must update the docs."""
    missing = []
    for span in _code_spans(page):
        for dotted in re.findall(r"(?<![\w./])((?:dino_seg|train|eval)(?:\.[A-Za-z_]\w*)+)", span):
            try:
                _resolve(dotted)
            except (ImportError, AttributeError):
                missing.append(dotted)
        for path in re.findall(r"(?<![\w./])((?:dino_seg|tests|benchmarks|train|eval|docs|assets|\.ci)/[\w./-]*)",
                               span):
            if "<" not in span and not (ROOT / path).exists():
                missing.append(path)
    for lang, body in _FENCE.findall(page.read_text(encoding="utf-8")):
        if lang != "python":
            continue
        for module, names in re.findall(r"^from ((?:dino_seg|train|eval)[\w.]*) import (.+)$", body, re.M):
            for name in names.split(","):
                try:
                    _resolve(f"{module}.{name.strip()}")
                except (ImportError, AttributeError):
                    missing.append(f"{module}.{name.strip()}")
    assert not missing, f"{page.relative_to(ROOT)} names what does not exist: {missing}"


def _preset_rows() -> dict[str, list[str]]:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| preset |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    assert header == ["preset", "model", "file", "URL", "size", "MD5 begins"]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def _float32_mb(arch: str, patch_size: int | None) -> int:
    with torch.device("meta"):  # shapes only, no memory
        model = build_backbone(arch, patch_size or 16)
    return round(sum(t.numel() for t in model.state_dict().values()) * 4 / 1e6)


def _model_name(arch: str, patch_size: int | None) -> str:
    if arch == "resnet50":
        return "ResNet-50"
    return {"vit_tiny": "ViT-Ti", "vit_small": "ViT-S", "vit_base": "ViT-B"}[arch] + f"/{patch_size}"


def test_preset_table_equals_the_registry() -> None:
    rows = _preset_rows()
    assert list(rows) == list(weights.PRESETS), "README's preset table must list dino_seg.weights.PRESETS, in order"
    for name, preset in weights.PRESETS.items():
        _, model, filename, url, size, md5 = rows[name]
        assert (filename, url) == (preset.filename, preset.url or "–"), name  # no URL: never downloaded
        prefix, pinned_size = weights.PINNED.get(name, (None, None))
        assert md5 == (prefix or "not pinned"), name
        arch, patch_size = getattr(preset, "arch", None), getattr(preset, "patch_size", None)
        known = arch in ARCHS and (arch not in VIT_WIDTHS or patch_size in PATCH_SIZES)
        if known:
            assert model == _model_name(arch, patch_size), name
        if pinned_size is not None:
            assert size == f"{pinned_size:,} bytes", name
        elif known:
            assert size == f"≈ {_float32_mb(arch, patch_size)} MB", name
        else:
            assert re.fullmatch(r"≈ [\d,.]+ [MG]B|[\d,]+ bytes", size), name


def _commands(page: Path) -> list[list[str]]:
    """The command lines in a page's bash blocks, continuation lines joined, comments dropped."""
    out = []
    for lang, body in _FENCE.findall(page.read_text(encoding="utf-8")):
        if lang != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if "..." in line:  # an elided example (`torchrun ... -m train ...`)
                continue
            for part in line.split("&&"):
                tokens = shlex.split(part, comments=True)
                if tokens:
                    out.append(tokens)
    return out


def _command_argv(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(command, its arguments) of `python -m X ...`, `torchrun ... -m X ...`, `srun ... python -m X` or
    `python app.py ...`; None for other lines."""
    for i, token in enumerate(tokens):
        if token == "-m" and i + 1 < len(tokens) and tokens[i + 1] in PARSERS:
            return tokens[i + 1], tokens[i + 2:]
        if token == "app.py" and i > 0 and tokens[i - 1] == "python":
            return "app.py", tokens[i + 1:]
    return None


def _examples(pages: list[Path]) -> list[tuple[str, str, list[str]]]:
    found = []
    for page in pages:
        for tokens in _commands(page):
            command = _command_argv(tokens)
            if command:
                found.append((page.relative_to(ROOT).as_posix(), *command))
    return found


README_EXAMPLES = _examples([README])


def test_readme_shows_every_command_offline() -> None:
    shown = {command for _, command, argv in README_EXAMPLES if argv[:2] == ["--pretrained_weights", "random"]
             or command == "train"}
    assert shown == set(PARSERS)


@pytest.mark.parametrize("page,command,argv", _examples(PAGES),
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:40])
def test_examples_parse_with_the_commands_parser(page: str, command: str, argv: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    parser = importlib.import_module(PARSERS[command]).get_args_parser()
    error = None
    try:
        parser.parse_args(argv)
    except SystemExit:
        error = capsys.readouterr().err.strip().splitlines()[-1]  # argparse's last line says what is wrong
    assert error is None, f"{page}: `{command} {' '.join(argv)}` does not parse: {error}"


def test_app_page_lists_the_api_endpoints() -> None:
    """docs/app.md's endpoint list is the public API that tests/test_app_api.py checks the running app against."""
    tree = ast.parse((ROOT / "tests" / "test_app_api.py").read_text(encoding="utf-8"))
    tested = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "ENDPOINTS" for t in node.targets))
    text = (ROOT / "docs" / "app.md").read_text(encoding="utf-8")
    section = text[text.index("## API"):]
    listed = set(re.findall(r"`(/\w+)`", section[:section.index("```")]))
    assert listed == set(tested)


# Flags of other programs the docs show: pip, torchrun and srun.
OTHER_FLAGS = {"--index-url", "--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port", "--nodes",
               "--ntasks-per-node", "--gpus-per-node"}


@functools.cache
def _known_flags() -> frozenset[str]:
    flags = set(OTHER_FLAGS)
    for module in PARSERS.values():
        for action in importlib.import_module(module).get_args_parser()._actions:
            flags.update(action.option_strings)
    for script in (ROOT / "benchmarks").glob("*.py"):
        flags.update(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text(encoding="utf-8")))
    return frozenset(flags)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_named_exists(page: Path) -> None:
    """A flag the docs name anywhere (prose, tables, examples) is one a command or benchmark script accepts."""
    text = re.sub(r"\]\([^)\s]*\)", "]", page.read_text(encoding="utf-8"))  # link targets (anchors) are not flags
    named = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text))
    unknown = sorted(named - _known_flags())
    assert not unknown, f"{page.relative_to(ROOT)} names flags that no command accepts: {unknown}"
