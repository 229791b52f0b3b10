"""An exponential moving average of the weights (``trainer.ema``), on torch's own ``swa_utils``.

Why torch's: ``AveragedModel`` with ``get_ema_multi_avg_fn`` updates every tensor of a
device/dtype group in one ``_foreach_lerp_``, and it is the averaging torch documents and keeps.
``use_buffers=True`` averages the BatchNorm running statistics together with the weights (as
timm's ``ModelEmaV3`` does), so the averaged network comes with statistics that match it and
needs no extra pass over the data (``update_bn`` is for equal-weight SWA).

The counter ``n_averaged`` stays on the CPU (the averaged copy lives on the model's device), so
``AveragedModel``'s own ``n_averaged == 0`` test reads no device memory: no per-step host sync.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """EMA of a model's weights and buffers: ``decay`` per update, one update every ``every``
    optimizer steps from step ``start_step`` on (the first update copies the weights).

    ``decay`` is per *update*: with ``every=k`` the average forgets at ``decay ** (1/k)`` per step.
    """

    def __init__(self, model: nn.Module, decay: float, start_step: int = 0, every: int = 1) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"trainer.ema.decay must be in (0, 1), got {decay}")
        self.decay, self.start_step, self.every = float(decay), int(start_step), max(1, int(every))
        self._ema = get_ema_multi_avg_fn(self.decay)
        self.averaged = AveragedModel(model, multi_avg_fn=self._ema, use_buffers=True)
        self._pairs: tuple | None = None  # (model, its float tensors and the average's, the others)
        self.averaged.requires_grad_(False)
        self.step = 0  # optimizer steps seen (a Python int: counting it costs no device work)

    @property
    def module(self) -> nn.Module:
        """The averaged network (same class and keys as the trained one)."""
        return self.averaged.module

    def update(self, model: nn.Module) -> None:
        """Count one optimizer step of ``model``; average it in when the step is due."""
        self.step += 1
        if self.step <= self.start_step or (self.step - self.start_step - 1) % self.every:
            return
        if not self.started:  # torch's first update: copy the weights
            self.averaged.update_parameters(model)
            return
        # Later updates apply torch's EMA function to lists built once. update_parameters would
        # rebuild and regroup them every call: 2.25 ms a step on the Fashion CNN (38 weights,
        # 36 buffers) against 0.18 ms for the lerp itself, measured on this CPU.
        if self._pairs is None or self._pairs[0] is not model:
            self._pairs = (model, *_float_and_other_tensors(self.module, model))
        _, averaged, current, averaged_other, current_other = self._pairs
        self._ema(averaged, current, None)
        for mine, theirs in zip(averaged_other, current_other, strict=True):
            mine.copy_(theirs)  # BatchNorm's num_batches_tracked: a count, not something to average
        self.averaged.n_averaged += 1

    @property
    def started(self) -> bool:
        """Whether any update has happened (before that the average is not a set of weights)."""
        return int(self.averaged.n_averaged) > 0

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.module.state_dict(), "n_averaged": int(self.averaged.n_averaged),
                "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` bit for bit (a resumed run averages on exactly)."""
        self.module.load_state_dict(state["weights"])
        self.averaged.n_averaged.fill_(int(state["n_averaged"]))
        self.step = int(state["step"])


def _float_and_other_tensors(average: nn.Module, model: nn.Module) -> tuple[list, list, list, list]:
    """Matching detached tensors (parameters, then buffers) of the average and the model: the
    floating-point ones (averaged) and the others (copied)."""
    pairs = zip([*average.parameters(), *average.buffers()], [*model.parameters(), *model.buffers()],
                strict=True)
    floats, others = [], []
    for mine, theirs in pairs:
        (floats if mine.is_floating_point() else others).append((mine.detach(), theirs.detach()))
    return ([m for m, _ in floats], [t for _, t in floats], [m for m, _ in others], [t for _, t in others])
