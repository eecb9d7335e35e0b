"""--device auto picks CUDA, then Apple MPS, then CPU (availability monkeypatched); named devices are checked."""

from __future__ import annotations

import pytest
import torch

from dino_seg.device import pick_device


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device("auto") == torch.device(expected)
    assert pick_device("") == torch.device(expected)  # empty means auto
    assert pick_device("AUTO") == torch.device(expected)


def test_named_devices_must_be_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^--device: 'cuda:1' asked for, but CUDA is not available on this machine$"):
        pick_device("cuda:1")
    with pytest.raises(ValueError, match=r"^--device: 'mps' asked for, but MPS is not available"):
        pick_device("mps")
    with pytest.raises(ValueError, match=r"^--device: unknown device 'tpu'"):
        pick_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
