"""The command runner (dino_seg.cli) and every command under it: bad input and a full disk are one line and exit 2,
Ctrl-C exits 130, bugs keep their traceback."""

from __future__ import annotations

import errno
import importlib

import pytest
from PIL import Image

from dino_seg.cli import check_output_dir, error_line, run_command
from dino_seg.errors import UserError
from dino_seg.files import NoSpaceError
from train_helpers import run_cli

# (module, the flag of its main input, the flag of its output folder); --pretrained_weights random: no download.
COMMANDS = [
    ("eval.discover", "--image_path", "--output_dir"),
    ("eval.attention", "--image_path", "--output_dir"),
    ("eval.video_attention", "--input_path", "--output_path"),
    ("eval.davis", "--data_path", "--output_dir"),
    ("eval.knn", "--data_path", "--output_dir"),
    ("eval.linear", "--data_path", "--output_dir"),
    ("train", "--data_path", "--output_dir"),
]
MISSING = {  # what each command says of a --data_path / --image_path / --input_path that does not exist
    "eval.discover": "--image_path {p}: no such file or folder",
    "eval.attention": "--image_path {p}: no such file or folder",
    "eval.video_attention": "--input_path {p}: no such file or folder",
    "eval.davis": "DAVIS root not found: {p} (expected a folder holding JPEGImages/ and Annotations/)",
    "eval.knn": "--data_path: {p} is not a folder (expected an ImageFolder root with train/ and val/)",
    "eval.linear": "--data_path: {p} is not a folder (expected an ImageFolder root with train/ and val/)",
    "train": "--data_path: {p} does not exist",
}
# The commands whose work lives in a module of its own, imported once the flags parse.
RUN_MODULES = {m: f"{m}_run" for m in ("eval.attention", "eval.davis", "eval.discover", "eval.video_attention", "eval.knn",
                                         "eval.linear")}
TINY = {"train": ["--arch", "vit_tiny", "--out_dim", "64", "--num_workers", "0", "--device", "cpu"],
        "eval.knn": ["--num_workers", "0", "--device", "cpu"], "eval.linear": ["--num_workers", "0", "--device", "cpu"]}


def _main(module: str):
    return importlib.import_module("train.main" if module == "train" else module).main


def _argv(module: str, input_flag: str, input_path, output_flag: str, output_path) -> list[str]:
    weights = [] if module == "train" else ["--pretrained_weights", "random"]
    return [*weights, *TINY.get(module, ["--device", "cpu"]), input_flag, str(input_path), output_flag, str(output_path)]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in" / "img.png"
    path.parent.mkdir()
    Image.new("RGB", (48, 48), (120, 60, 30)).save(path)
    return path


@pytest.mark.parametrize("module,input_flag,output_flag", COMMANDS)
def test_a_missing_input_is_one_line_and_exit_2(module, input_flag, output_flag, tmp_path):
    missing = tmp_path / "nowhere"
    code, _, stderr = run_cli(_main(module), _argv(module, input_flag, missing, output_flag, tmp_path / "out"))
    assert (code, stderr) == (2, f"error: {MISSING[module].format(p=missing)}\n")


@pytest.mark.parametrize("module,input_flag,output_flag", COMMANDS)
def test_an_output_folder_that_is_a_file_is_one_line_and_exit_2(module, input_flag, output_flag, tmp_path, image):
    taken = tmp_path / "taken"
    taken.write_text("x")
    source = image.parent if module in ("eval.video_attention", "train") else image
    code, _, stderr = run_cli(_main(module), _argv(module, input_flag, source, output_flag, taken))
    assert (code, stderr) == (2, f"error: {output_flag} {taken}: is a file, expected a folder\n")


@pytest.mark.parametrize("module,input_flag,output_flag", COMMANDS)
def test_ctrl_c_exits_130_with_one_line(module, input_flag, output_flag, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # The command's work is replaced after the flags are parsed: the runner around it is what is tested.
    # An evaluation's run lives in eval.<command>_run, imported by its main() (so that --help needs no torch).
    target = importlib.import_module({"train": "train.main"}.get(module, RUN_MODULES.get(module, module)))
    monkeypatch.setattr(target, "train_dino" if module == "train" else "run", interrupted)
    code, _, stderr = run_cli(_main(module), _argv(module, input_flag, tmp_path, output_flag, tmp_path / "out"))
    assert code == 130
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "Traceback" not in stderr


def test_run_command_reports_user_errors_and_disk_errors_in_one_line(capsys):
    def failing(err: BaseException):
        def run() -> int:
            raise err
        return run

    cases = [
        (UserError("--flag: expected 1, got 2"), "error: --flag: expected 1, got 2"),
        # A DataLoader worker re-raises the error with the worker's traceback in the message: its last line is kept.
        (UserError("Caught UserError in DataLoader worker process 0.\nTraceback (most recent call last):\n"
                   "  File \"x.py\", line 1\ndino_seg.errors.UserError: x.jpg: not an image"),
         "error: x.jpg: not an image"),
        (NoSpaceError("out/checkpoint.pth"), "error: no space left on device while writing out/checkpoint.pth"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "in/x.jpg"),
         "error: in/x.jpg: No such file or directory"),
        (PermissionError(errno.EACCES, "Permission denied", "out", None, "out/x"), "error: out -> out/x: Permission denied"),
        (NotADirectoryError(errno.ENOTDIR, "--data_path: d is not a folder"), "error: --data_path: d is not a folder"),
    ]
    for err, line in cases:
        assert run_command(failing(err)) == 2
        assert capsys.readouterr().err == line + "\n"
    assert run_command(lambda: 0) == 0 and run_command(lambda: 3) == 3
    assert capsys.readouterr().err == ""


def test_run_command_leaves_bugs_their_traceback():
    # A plain ValueError or an OSError of another kind is a bug, not the user's input: it propagates.
    for err in (ValueError("shapes (3,) and (4,) differ"), KeyError("x"), OSError(errno.EIO, "I/O error"),
                ConnectionResetError(errno.ECONNRESET, "reset")):
        with pytest.raises(type(err)):
            run_command(lambda err=err: (_ for _ in ()).throw(err))
    assert error_line(ValueError("x")) is None and error_line(OSError(errno.EBADF, "bad fd")) is None


def test_run_command_under_torchrun_tags_errors_and_lets_rank_0_report_ctrl_c(monkeypatch, capsys):
    def interrupted() -> int:
        raise KeyboardInterrupt

    def bad() -> int:
        raise UserError("--data_path: d has no val/ folder")

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_command(bad) == 2
    assert capsys.readouterr().err == "[rank 1] error: --data_path: d has no val/ folder\n"
    assert run_command(interrupted, interrupted="kept") == 130
    assert capsys.readouterr().err == ""  # every process gets Ctrl-C: rank 0 alone says so
    monkeypatch.setenv("RANK", "0")
    assert run_command(interrupted, interrupted=lambda: "computed when interrupted") == 130
    assert capsys.readouterr().err == "\ninterrupted: computed when interrupted\n"


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path)  # an existing folder
    check_output_dir(tmp_path / "new")  # a folder to create
    check_output_dir(None)  # no output asked for
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=f"^--dump_features {tmp_path / 'f'}: is a file, expected a folder$"):
        check_output_dir(tmp_path / "f", "--dump_features")


@pytest.mark.parametrize("module,arch,patch", [("eval.attention", "vit_small", 8), ("eval.video_attention", "vit_small", 8),
                                               ("eval.davis", "vit_small", 16), ("eval.discover", "vit_small", 16)])
def test_random_weights_are_the_commands_documented_default_model(module, arch, patch):
    from eval.common import load_from_args

    parser = importlib.import_module(module).get_args_parser()
    required = ["--input_path", "x"] if module == "eval.video_attention" else []
    model, description = load_from_args(parser.parse_args(["--pretrained_weights", "random", *required]), "cpu")
    assert (model.arch, model.patch_size) == (arch, patch)
    assert description == f"RANDOM weights {arch}/{patch} (pipeline check only, not DINO)"
    # With --arch / --patch_size the flags decide; no official release of vit_tiny means random weights.
    args = parser.parse_args(["--arch", "vit_tiny", *required])
    model, description = load_from_args(args, "cpu")
    assert (model.arch, model.patch_size) == ("vit_tiny", patch)
    assert description == f"RANDOM weights vit_tiny/{patch}: there is no official DINO release for this model"


def test_train_with_a_missing_data_path_prints_only_the_error(tmp_path, capsys):
    # The flags are printed at the start of a run: a wrong --data_path must stop before that, with one line.
    from train.__main__ import main as train_main

    code = train_main(["--data_path", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "out"),
                       "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == f"error: --data_path: {tmp_path / 'nope'} does not exist\n"
