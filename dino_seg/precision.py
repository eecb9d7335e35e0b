"""`--precision fp32|bf16|fp16`: the autocast context of inference, checked against what the device supports."""

from __future__ import annotations

import contextlib

import torch

from dino_seg import names
from dino_seg.errors import UserError

PRECISIONS = names.PRECISIONS
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(UserError):
    """A precision the device cannot run; one line naming --precision."""


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16, AMX or Arm BF16) that oneDNN uses: without
    them bf16 autocast is emulated, slower than fp32, and refused rather than silently slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise PrecisionError unless `device` runs `precision` (fp32 always runs)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(device)
            raise PrecisionError(f"--precision bf16: {name} has no bfloat16 support; use fp16 or fp32")
    elif device.type == "cpu":
        if precision == "fp16":
            raise PrecisionError("--precision fp16: not supported on CPU (no float16 autocast kernels there); "
                                 "use bf16 or fp32")
        if not cpu_has_bf16():
            raise PrecisionError("--precision bf16: this CPU has no bfloat16 instructions (AVX512-BF16, AMX or "
                                 "Arm BF16); use fp32")
    elif device.type != "mps":
        raise PrecisionError(f"--precision {precision}: not supported on {device.type}; use fp32")


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context that runs the backbone at `precision` on `device`: nothing for fp32 (exact, the default),
    torch.autocast otherwise (matmuls and convolutions in half precision, reductions and norms in fp32)."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])
