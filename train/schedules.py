"""Per-iteration schedules of the DINO recipe: cosine with linear warm-up, and the teacher temperature."""

from __future__ import annotations

import numpy as np

from dino_seg.errors import UserError


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """One value per training iteration, (epochs * niter_per_ep,): a linear warm-up from
    `start_warmup_value` to `base_value` over `warmup_epochs`, then a half cosine down (or up)
    to `final_value`, exactly as the reference `utils.cosine_scheduler`.

    The cosine reaches `final_value` only one step after the last iteration (the reference divides
    by the number of cosine iterations, not by that number minus one); we keep that.
    """
    if epochs <= 0 or niter_per_ep <= 0:
        raise ValueError(f"cosine_scheduler: expected positive epochs and iterations per epoch, "
                         f"got epochs={epochs}, niter_per_ep={niter_per_ep}")
    if not 0 <= warmup_epochs <= epochs:
        raise UserError(f"--warmup_epochs: expected between 0 and --epochs ({epochs}), got {warmup_epochs}")
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float,
                          warmup_teacher_temp_epochs: int, epochs: int) -> np.ndarray:
    """One teacher temperature per epoch, (epochs,): linear from `warmup_teacher_temp` to
    `teacher_temp` over the warm-up epochs, then constant (the reference `DINOLoss` schedule).

    Like the reference, the warm-up's last epoch already uses `teacher_temp` (np.linspace includes
    its end point).
    """
    if not 0 <= warmup_teacher_temp_epochs <= epochs:
        raise UserError(f"--warmup_teacher_temp_epochs: expected between 0 and --epochs ({epochs}), "
                         f"got {warmup_teacher_temp_epochs}")
    return np.concatenate((
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
        np.ones(epochs - warmup_teacher_temp_epochs) * teacher_temp,
    ))
