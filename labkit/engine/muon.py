"""``optimizer=muon``: torch's own :class:`torch.optim.Muon` for the hidden weight matrices and a
second optimizer for everything else, behind one :class:`torch.optim.Optimizer`.

Partition rule (the speed-run recipe of Keller Jordan's Muon and airbench): the weight matrices
are the parameters with ``ndim >= 2`` in the model's registration order (``model.parameters()``);
the **first and last weight matrices in the model's registration order** (the input layer or
stem, and the classifier) and every parameter with ``ndim < 2`` (biases, norm scales and shifts)
go to the auxiliary optimizer; all other weight matrices go to Muon. A convolution filter
``[out, in, kh, kw]`` is given to Muon as an ``[out, in * kh * kw]`` matrix that shares storage
with the real weight, so Muon's in-place update is the weight's update.

torch's Muon itself is used, not a copy of its algorithm: its Newton-Schulz iteration, learning
rate adjustment and state layout stay torch's, tested and updated with torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from labkit.config.choices import MUON_ADJUST_LR

log = logging.getLogger(__name__)


def split_parameters(params: Iterable[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(muon, aux)``: the hidden weight matrices for Muon, the rest for the auxiliary optimizer.

    ``params`` in the model's registration order. Of the parameters with ``ndim >= 2``, the first
    (input layer / stem) and the last (classifier) go to ``aux``, as does every parameter with
    ``ndim < 2``; the others go to ``muon``. Each list keeps the registration order.
    """
    params = list(params)
    matrices = [i for i, p in enumerate(params) if p.ndim >= 2]
    edges = {matrices[0], matrices[-1]} if matrices else set()
    muon = [p for i, p in enumerate(params) if p.ndim >= 2 and i not in edges]
    aux = [p for i, p in enumerate(params) if p.ndim < 2 or i in edges]
    return muon, aux


def _flat(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``tensor`` ``[out, in, kh, kw]`` as the ``[out, in * kh * kw]`` matrix Muon sees; a view
    wherever the layout allows one (always for the weight, see :func:`matrix_alias`)."""
    if channels_last:  # columns ordered (kh, kw, in): the order of the NHWC storage
        tensor = tensor.permute(0, 2, 3, 1)
    return tensor.reshape(tensor.shape[0], -1)


@dataclass(frozen=True)
class FlatWeight:
    """A weight of more than two dimensions and the 2-D alias Muon updates in its place."""

    weight: torch.Tensor
    alias: torch.Tensor
    channels_last: bool

    def point_grad(self) -> None:
        """Give the alias the weight's gradient, flattened the same way (None stays None)."""
        grad = self.weight.grad
        self.alias.grad = None if grad is None else _flat(grad, self.channels_last)

    def check(self) -> None:
        """Refuse to step a weight whose storage was replaced (``model.to(...)`` after building
        the optimizer): Muon would update the old storage and the weight would never move."""
        if self.alias.untyped_storage().data_ptr() != self.weight.untyped_storage().data_ptr():
            raise RuntimeError(f"a {tuple(self.weight.shape)} weight no longer shares storage with "
                               "its Muon matrix: build the optimizer after moving the model "
                               "(device, dtype, memory format)")


def matrix_alias(weight: torch.Tensor) -> FlatWeight:
    """The 2-D view of ``weight`` (``ndim > 2``) that shares its storage.

    A contiguous weight is already row-major ``[out, in * kh * kw]``. A channels_last weight
    (labkit's fast path converts convolutional models) is stored as ``[out, kh, kw, in]``, so the
    view takes its columns in that order: the same matrix up to a permutation of its columns.
    Muon's orthogonalisation commutes with it (``NS(G P) = NS(G) P`` for a permutation ``P``, as
    ``(G P)(G P)^T = G G^T``), and the learning-rate adjustment reads only the shape, so the update
    is the one Muon would compute on the contiguous matrix, written in the weight's own layout.
    """
    channels_last = not weight.is_contiguous()
    if channels_last and not (weight.ndim == 4 and weight.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"Muon needs a contiguous or channels_last weight; got shape {tuple(weight.shape)} "
                         f"with strides {weight.stride()}")
    base = weight.detach()
    alias = (base.permute(0, 2, 3, 1) if channels_last else base).view(weight.shape[0], -1)
    return FlatWeight(weight, alias, channels_last)


class MuonWithAuxiliary(torch.optim.Optimizer):
    """Muon for the hidden matrices and an auxiliary optimizer for the rest, as one optimizer.

    ``param_groups`` are the inner optimizers' own group dicts (Muon's first), so a learning-rate
    schedule that writes ``group["lr"]`` drives both; ``step`` steps both; ``state_dict`` holds
    both inner state dicts under ``"muon"`` and ``"aux"``. ``muon`` is None when the model has no
    hidden matrix (e.g. a one-block MLP): the auxiliary optimizer then trains everything.
    """

    def __init__(self, muon: torch.optim.Optimizer | None, aux: torch.optim.Optimizer,
                 flat_weights: Iterable[FlatWeight] = ()) -> None:
        self.optimizers = {name: opt for name, opt in (("muon", muon), ("aux", aux)) if opt is not None}
        self.flat_weights = list(flat_weights)
        # torch's Optimizer keeps the group dicts it is given (defaults {} adds no key to them)
        super().__init__(self._inner_groups(), {})

    def _inner_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of both optimizers: no host sync (no tensor value is read here)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for flat in self.flat_weights:
            flat.check()
            flat.point_grad()
        for opt in self.optimizers.values():
            opt.step()
        for flat in self.flat_weights:  # the weight's gradient stays the one to read and clear
            flat.alias.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of both optimizers' parameters and of the flattened weights (which
        neither inner optimizer holds: Muon holds their 2-D aliases)."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)
        for flat in self.flat_weights:
            if set_to_none:
                flat.weight.grad = None
            elif flat.weight.grad is not None:
                flat.weight.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """``{"muon": ..., "aux": ...}``: each inner optimizer's own state dict."""
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore both inner optimizers; refuse a state dict of another layout in one line."""
        if not isinstance(state_dict, dict) or set(state_dict) != set(self.optimizers):
            keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"not a state dict of this Muon + auxiliary optimizer: it has {keys}, "
                             f"expected the keys {sorted(self.optimizers)} (written by another "
                             "optimizer or for another model?)")
        for name, opt in self.optimizers.items():
            try:
                opt.load_state_dict(state_dict[name])
            except ValueError as exc:
                raise ValueError(f"the {name!r} part of the optimizer state does not fit: {exc}") from exc
        # torch's load_state_dict installs new group dicts in each inner optimizer: share them again
        self.param_groups[:] = self._inner_groups()


def muon(params: Iterable[torch.Tensor], *, lr: float, momentum: float, nesterov: bool,
         weight_decay: float, adjust_lr_fn: str | None, ns_steps: int,
         aux: Callable[..., torch.optim.Optimizer], fused: bool = False) -> MuonWithAuxiliary:
    """The Hydra target of ``optimizer=muon``: split ``params`` (registration order) by
    :func:`split_parameters`, Muon on the hidden matrices, ``aux(params=..., [fused=True])`` on the
    rest. ``fused`` is passed on to ``aux`` only when true, so an optimizer without a fused
    version raises and :func:`labkit.engine.optim.build_optimizer` retries without it."""
    if adjust_lr_fn is not None and adjust_lr_fn not in MUON_ADJUST_LR:
        raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r}: expected one of {', '.join(MUON_ADJUST_LR)}")
    hidden, rest = split_parameters(params)
    if not rest:
        raise ValueError("optimizer=muon got no parameters")
    flat_weights = [matrix_alias(p) for p in hidden if p.ndim > 2]
    aliases = {id(f.weight): f.alias for f in flat_weights}
    matrices = [aliases.get(id(p), p) for p in hidden]
    inner = (torch.optim.Muon(matrices, lr=lr, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay, adjust_lr_fn=adjust_lr_fn, ns_steps=ns_steps)
             if matrices else None)
    if inner is None:
        log.warning("optimizer=muon: the model has no hidden weight matrix; %s trains all of it",
                    getattr(aux, "func", aux))
    second = aux(params=rest, fused=True) if fused else aux(params=rest)
    return MuonWithAuxiliary(inner, second, flat_weights)
