"""The DINO loss: cross-entropy from the centred, sharpened teacher to the student, with an EMA centre."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from train.schedules import teacher_temp_schedule


class DINOLoss(nn.Module):
    """Cross-entropy between teacher and student softmax outputs over all pairs of different views.

    `center` is a registered buffer (saved in the checkpoint's `dino_loss`), updated after each call
    by an EMA of the teacher's mean output over the global batch (all-reduced across processes).
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        # A too high teacher temperature makes the start of training unstable, hence the warm-up.
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs)

    def teacher_probs(self, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        """Centred and sharpened teacher distributions, (2B, out_dim), in float32 without gradient."""
        temp = float(self.teacher_temp_schedule[epoch])
        return F.softmax((teacher_output.detach().float() - self.center) / temp, dim=-1)

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor,
                epoch: int) -> torch.Tensor:
        """student_output: (ncrops * B, out_dim), teacher_output: (2 * B, out_dim), crops in view order.
        Returns the mean loss over the 2 * (ncrops - 1) (teacher view, other student view) pairs and
        updates the centre."""
        student_logp = F.log_softmax(student_output.float() / self.student_temp, dim=-1).chunk(self.ncrops)
        teacher_p = self.teacher_probs(teacher_output, epoch).chunk(2)
        total = student_output.new_zeros((), dtype=torch.float32)
        n_terms = 0
        for iq, q in enumerate(teacher_p):
            for v, logp in enumerate(student_logp):
                if v == iq:
                    continue  # the reference skips pairs where teacher and student see the same view
                total = total + torch.sum(-q * logp, dim=-1).mean()
                n_terms += 1
        self.update_center(teacher_output)
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """EMA of the teacher's mean output over all processes' batches."""
        batch_center = torch.sum(teacher_output.float(), dim=0, keepdim=True)  # (1, out_dim)
        count = teacher_output.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            count *= dist.get_world_size()
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


@torch.no_grad()
def collapse_monitors(teacher_probs: torch.Tensor, loss: torch.Tensor) -> tuple[float, float]:
    """(entropy of the teacher's mean distribution, mean KL(teacher || student)) in nats.

    teacher_probs: (2B, out_dim) as `DINOLoss.teacher_probs` before the centre update; loss: the DINO
    loss on the same batch. The entropy tends to 0 when one dimension dominates and to log(out_dim)
    when the outputs become uniform: both are collapse. As every teacher view is paired with the same
    number of student views, the mean KL over the loss's pairs is the loss minus the teacher's mean
    per-sample entropy; it tends to 0 when student and teacher stop carrying information.
    """
    mean_p = teacher_probs.mean(dim=0)  # (out_dim,)
    mean_entropy = -(mean_p * torch.log(mean_p.clamp_min(1e-30))).sum()
    sample_entropy = -(teacher_probs * torch.log(teacher_probs.clamp_min(1e-30))).sum(dim=-1).mean()
    return float(mean_entropy), float(loss.detach().float() - sample_entropy)


def collapse_warning(teacher_entropy: float, kl: float) -> str | None:
    """A warning when an epoch's monitors show collapse, else None: all outputs on one dimension
    (mean teacher entropy ~ 0), or teacher and student agreeing on a constant output (KL ~ 0, as with
    uniform outputs)."""
    if teacher_entropy < 0.05:
        what = f"the teacher's mean output sits on one dimension (entropy {teacher_entropy:.3g} nats)"
    elif kl < 0.01:
        what = f"teacher and student outputs no longer differ (KL {kl:.3g} nats)"
    else:
        return None
    return (f"possible collapse: {what}. On small or custom data, try --momentum_teacher 0.99, "
            "--out_dim between 1024 and 8192, or a lower --teacher_temp.")
