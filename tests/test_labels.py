"""The one label-PNG reader (dino_seg.labels) and the three readers built on it keep their former rules."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dino_seg.davis import DavisError, read_annotation
from dino_seg.groundtruth import load_mask
from dino_seg.images import ImageError
from dino_seg.labels import read_label_png
from dino_seg.metrics import _read_result
from dino_seg.viz import davis_palette


def _palette(path, values):
    im = Image.fromarray(np.array([values], np.uint8))
    im.putpalette(davis_palette().ravel().tolist())
    im.save(path)
    return path


def _plain(path, values, mode):
    arr = np.array([values])
    if mode == "1":
        Image.fromarray(arr.astype(bool)).save(path)
    elif mode == "I;16":
        Image.fromarray(arr.astype(np.uint16)).save(path)
    elif mode == "F":
        Image.fromarray(arr.astype(np.float32)).save(path)  # a TIFF: PNG has no float mode
    elif mode == "RGB":
        Image.fromarray(np.array([[[0, 0, 0], [0, 9, 0], [7, 0, 0], [0, 0, 0]]], np.uint8)).save(path)
    else:
        Image.fromarray(arr.astype(np.uint8), mode="L").save(path)
    return path


def test_palette_png_indices_as_stored_and_void(tmp_path):
    path = _palette(tmp_path / "p.png", [0, 1, 2, 255])
    fg, void = load_mask(path)
    assert fg.tolist() == [[False, True, True, False]] and void.tolist() == [[False, False, False, True]]
    assert read_annotation(path).tolist() == [[0, 1, 2, 255]]  # void kept as stored
    assert _read_result(path, (1, 4), 2).tolist() == [[0, 1, 2, 255]]  # scoring rejects 255 by object count
    # A palette PNG holding only 0 and 255 is background and void, never DAVIS 2016's object.
    path = _palette(tmp_path / "p2.png", [0, 255, 255, 0])
    assert read_annotation(path).tolist() == [[0, 255, 255, 0]]
    assert _read_result(path, (1, 4), 1).tolist() == [[0, 255, 255, 0]]
    assert load_mask(path)[0].sum() == 0


def test_grayscale_0_255_is_one_object_where_one_object_is_expected(tmp_path):
    path = _plain(tmp_path / "g.png", [0, 255, 255, 0], "L")
    fg, void = load_mask(path)
    assert fg.tolist() == [[False, True, True, False]] and not void.any()
    assert read_annotation(path).tolist() == [[0, 1, 1, 0]]
    assert _read_result(path, (1, 4), 1).tolist() == [[0, 1, 1, 0]]
    assert _read_result(path, (1, 4), 3).tolist() == [[0, 255, 255, 0]]  # with 3 objects, 255 is an index
    assert read_label_png(path, binary_255="keep").labels.tolist() == [[0, 255, 255, 0]]


@pytest.mark.parametrize("mode, values, annotation, fg", [
    ("L", [0, 1, 2, 0], [0, 1, 2, 0], [False, True, True, False]),
    ("1", [0, 1, 1, 0], [0, 1, 1, 0], [False, True, True, False]),
    ("I;16", [0, 3, 0, 1], [0, 3, 0, 1], [False, True, False, True]),
])
def test_single_channel_integer_masks(tmp_path, mode, values, annotation, fg):
    path = _plain(tmp_path / "m.png", values, mode)
    assert read_annotation(path).tolist() == [annotation]
    assert read_annotation(path).dtype == np.uint8
    assert load_mask(path)[0].tolist() == [fg]
    assert _read_result(path, (1, 4), 3).tolist() == [annotation]


def test_colour_float_and_wide_values_are_masks_but_not_indices(tmp_path):
    rgb = _plain(tmp_path / "rgb.png", None, "RGB")
    assert load_mask(rgb)[0].tolist() == [[False, True, True, False]]  # any non-zero channel
    with pytest.raises(DavisError, match=r"^annotation .*rgb\.png is a RGB image: expected a palette or single"):
        read_annotation(rgb)
    with pytest.raises(DavisError, match=r"^result .*rgb\.png is a RGB image"):
        _read_result(rgb, (1, 4), 1)
    flt = _plain(tmp_path / "f.tif", [0, 0.5, -1, 2], "F")
    assert load_mask(flt)[0].tolist() == [[False, True, False, True]]  # positive values
    with pytest.raises(DavisError, match="is a F image"):
        read_annotation(flt)
    wide = _plain(tmp_path / "w.png", [0, 300, 0, 1], "I;16")
    assert load_mask(wide)[0].tolist() == [[False, True, False, True]]
    with pytest.raises(DavisError, match=r"^annotation .*w\.png holds values outside 0\.\.255$"):
        read_annotation(wide)


def test_missing_unreadable_and_wrong_size_files_are_one_line_errors(tmp_path):
    with pytest.raises(ImageError, match=r"^mask not found: .*none\.png$"):
        load_mask(tmp_path / "none.png")
    with pytest.raises(DavisError, match=r"^annotation not found: .*none\.png$"):
        read_annotation(tmp_path / "none.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    with pytest.raises(ImageError, match=r"^cannot read mask .*bad\.png: cannot identify image file"):
        load_mask(bad)
    with pytest.raises(DavisError, match=r"^cannot read result .*bad\.png"):
        _read_result(bad, (1, 4), 1)
    path = _palette(tmp_path / "p.png", [0, 1, 2, 0])
    with pytest.raises(DavisError, match=r"result .*p\.png is 4x1 but its ground truth is 8x2"):
        _read_result(path, (2, 8), 2)
