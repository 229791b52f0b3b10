"""DKD (Zhao et al. 2022, "Decoupled Knowledge Distillation"): KD split into a target-class term
(TCKD: the binary "target vs rest" distributions) and a non-target term (NCKD: the distributions
over the other classes only), each with its own weight instead of KD's coupling ``1 - p_t``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from labkit.distill.methods.base import DistillMethod, Outputs, check_number


def _binary_and_rest(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """log of [p_target, 1 - p_target] and the log-softmax over the non-target classes."""
    z = logits.float() / temperature
    others = z[~F.one_hot(targets, z.shape[1]).bool()].view(z.shape[0], -1)
    log_total = torch.logsumexp(z, dim=1, keepdim=True)
    log_pt = z.gather(1, targets[:, None]) - log_total
    log_rest = torch.logsumexp(others, dim=1, keepdim=True) - log_total  # log(1 - p_t), stable
    return torch.cat([log_pt, log_rest], dim=1), F.log_softmax(others, dim=1)


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
             alpha: float, beta: float, temperature: float) -> torch.Tensor:
    """``T^2 * (alpha * KL(b_t || b_s) + beta * KL(p^_t || p^_s))``, means over samples: b the
    binary target/rest probabilities, p^ the probabilities renormalised over non-target classes."""
    with torch.no_grad():
        t_binary, t_rest = _binary_and_rest(teacher_logits.detach(), targets, temperature)
    s_binary, s_rest = _binary_and_rest(student_logits, targets, temperature)
    tckd = F.kl_div(s_binary, t_binary, reduction="batchmean", log_target=True)
    nckd = F.kl_div(s_rest, t_rest, reduction="batchmean", log_target=True)
    return temperature**2 * (alpha * tckd + beta * nckd)


class DKD(DistillMethod):
    """DKD with a linear warm-up: the term grows from 0 to full weight over the first
    ``warmup`` share of training steps (mdistiller ``mdistiller/distillers/DKD.py:72``:
    ``min(epoch / warmup, 1.0)`` with ``WARMUP = 20`` of 240 epochs, ``engine/cfg.py:167``; here
    per step rather than per epoch). The count of steps done is criterion state that the engine's
    checkpoint carries (:meth:`progress`), so a resumed run continues the ramp."""

    name = "dkd"

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup: float = 20 / 240) -> None:
        super().__init__()
        self.alpha = check_number(self.name, "alpha", alpha)
        self.beta = check_number(self.name, "beta", beta)
        self.temperature = check_number(self.name, "temperature", temperature, low_open=True)
        self.warmup = check_number(self.name, "warmup", warmup, 0.0, 1.0)
        self.warmup_steps = 0  # set from the run's length (set_total_steps)
        self.steps_done = 0  # a Python int: reading it costs no device sync

    def set_total_steps(self, total_steps: int) -> None:
        self.warmup_steps = int(round(self.warmup * total_steps))

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor) -> torch.Tensor:
        """Called once per training step (the criterion is not used for evaluation)."""
        loss = dkd_loss(student.logits, teacher.logits, targets, self.alpha, self.beta, self.temperature)
        self.steps_done += 1
        if self.warmup_steps > 0:
            loss = min(1.0, self.steps_done / self.warmup_steps) * loss
        return loss

    def progress(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done}

    def restore_progress(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])

    def settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "T": self.temperature,
                "warmup": round(self.warmup, 3)}
