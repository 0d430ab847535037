"""What counts as fooled, and what the attacks ascend: a small Objective abstraction.

An objective turns model outputs into three things, all per snippet:

- ``reference(clean_outputs, labels) -> y``: what the attack compares against (the true label, a target class, the
  clean forecast...);
- ``margin(outputs, y) -> (B,)``: a score that is > 0 exactly when the snippet is fooled (the budget step rule
  ascends it and uses it to estimate the capital still missing);
- ``loss(outputs, y) -> (B,)``: what gradient steps ascend (``margin`` unless stated, cross-entropy for the thesis
  rule);
- ``fooled(outputs, y) -> (B,) bool``: the success criterion (always computed on the returned integer orders);
- ``eligible(clean_outputs, labels) -> (B,) bool``: which snippets are attacked at all.

Classification: :class:`Untargeted` (default: fooled when the prediction differs from the label) and
:class:`Targeted` (fooled when the prediction is the target class). Regression forecasts (issue 12):
:class:`ForecastShift` (fooled when the forecast moves by more than a threshold, or crosses zero). A user's
classifier with any number of classes: :class:`PredictionChange` (fooled when its call changes, or moves to a
target class).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _other_max(z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """max over classes != k of z (B, C) -> (B,)."""
    return z.masked_fill(F.one_hot(k, z.shape[1]).bool(), float("-inf")).amax(dim=1)


class Objective:
    """Base class; see the module docstring. Subclasses set ``name`` and implement ``margin`` and ``fooled``."""

    name = "objective"
    differentiable_margin = True

    def reference(self, clean_outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return labels

    def margin(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.margin(outputs, y)

    def fooled(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.margin(outputs, y) > 0

    def eligible(self, clean_outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ~self.fooled(clean_outputs, self.reference(clean_outputs, labels))

    def describe(self) -> str:
        return self.name


@dataclass
class Untargeted(Objective):
    """Fooled when argmax(logits) != label. ``loss="margin"`` ascends max_{k != y} z_k - z_y; ``"ce"`` the
    cross-entropy of the label (the thesis' loss)."""

    loss_kind: str = "margin"
    name = "untargeted"

    def __post_init__(self) -> None:
        if self.loss_kind not in ("margin", "ce"):
            raise ValueError(f"Untargeted: loss_kind must be 'margin' or 'ce', got {self.loss_kind!r}")

    def margin(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _other_max(outputs, y) - outputs.gather(1, y[:, None])[:, 0]

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "ce":
            return F.cross_entropy(outputs, y, reduction="none")
        return self.margin(outputs, y)

    def fooled(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=1) != y


@dataclass
class Targeted(Objective):
    """Fooled when argmax(logits) == target; only snippets classified right with label != target are attacked."""

    target: int = 0
    loss_kind: str = "margin"
    name = "targeted"

    def __post_init__(self) -> None:
        if self.target not in (0, 1, 2):
            raise ValueError(f"Targeted: target must be 0, 1 or 2, got {self.target}")
        if self.loss_kind not in ("margin", "ce"):
            raise ValueError(f"Targeted: loss_kind must be 'margin' or 'ce', got {self.loss_kind!r}")

    def reference(self, clean_outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, self.target)

    def margin(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return outputs.gather(1, y[:, None])[:, 0] - _other_max(outputs, y)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "ce":
            return -F.cross_entropy(outputs, y, reduction="none")
        return self.margin(outputs, y)

    def fooled(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=1) == y

    def eligible(self, clean_outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (clean_outputs.argmax(dim=1) == labels) & (labels != self.target)

    def describe(self) -> str:
        return f"targeted:{self.target}"


@dataclass
class ForecastShift(Objective):
    """Regression models (outputs (B,) or (B, 1)): fooled when the forecast moves away from the clean forecast by
    more than ``threshold`` (``mode="move"``), or changes sign (``mode="cross"``; forecasts of exactly 0 are not
    attacked). Every snippet is eligible in ``move`` mode. ``mode="up"`` / ``"down"``: fooled when the forecast rises /
    falls by more than ``threshold`` (one-sided: the margin's gradient at the clean book points the way, where
    ``|f - y|`` has none; ``move`` breaks that tie upwards, so attack ``up`` and ``down`` and keep the cheaper)."""

    threshold: float = 0.0
    mode: str = "move"
    name = "forecast"

    def __post_init__(self) -> None:
        if self.mode not in ("move", "cross", "up", "down"):
            raise ValueError(f"ForecastShift: mode must be 'move', 'cross', 'up' or 'down', got {self.mode!r}")
        if self.mode != "cross" and not self.threshold > 0:
            raise ValueError(f"ForecastShift: threshold must be > 0 in move mode, got {self.threshold}")

    @staticmethod
    def _flat(outputs: torch.Tensor) -> torch.Tensor:
        return outputs.reshape(outputs.shape[0])

    def reference(self, clean_outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._flat(clean_outputs).detach().clone()

    def margin(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = self._flat(outputs)
        d = f - y
        if self.mode == "move":
            return torch.where(d >= 0, d, -d) - self.threshold  # |d|, with gradient +1 (not 0) at d = 0
        if self.mode in ("up", "down"):
            return (d if self.mode == "up" else -d) - self.threshold
        return -torch.sign(y) * f

    def eligible(self, clean_outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        f = self._flat(clean_outputs)
        if self.mode == "cross":
            return f != 0
        return torch.ones_like(f, dtype=torch.bool)

    def describe(self) -> str:
        return f"forecast:{self.mode}:{self.threshold:g}"


@dataclass
class PredictionChange(Objective):
    """Classifiers with any number of classes, no true labels needed (issue 12): fooled when the predicted class
    differs from the clean prediction (``target=None``: every snippet is eligible), or equals ``target`` (only
    snippets not already predicted as the target are attacked)."""

    target: int | None = None
    name = "change"

    def __post_init__(self) -> None:
        if self.target is not None and int(self.target) < 0:
            raise ValueError(f"PredictionChange: target must be a class index >= 0, got {self.target}")

    def reference(self, clean_outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            return clean_outputs.argmax(dim=1)
        return torch.full((clean_outputs.shape[0],), int(self.target), dtype=torch.long, device=clean_outputs.device)

    def margin(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        own = outputs.gather(1, y[:, None])[:, 0]
        return _other_max(outputs, y) - own if self.target is None else own - _other_max(outputs, y)

    def fooled(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=1) != y if self.target is None else outputs.argmax(dim=1) == y

    def eligible(self, clean_outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            return torch.ones(clean_outputs.shape[0], dtype=torch.bool, device=clean_outputs.device)
        return clean_outputs.argmax(dim=1) != int(self.target)

    def describe(self) -> str:
        return "change" if self.target is None else f"change:target={self.target}"


def make_objective(name: str | Objective | None) -> Objective:
    """``None``/``"untargeted"`` -> Untargeted(); ``"targeted:K"`` -> Targeted(K); an Objective is returned as is."""
    if isinstance(name, Objective):
        return name
    if name in (None, "", "untargeted"):
        return Untargeted()
    if isinstance(name, str) and name.startswith("targeted:"):
        from lobsim.attacks.records import class_index

        return Targeted(target=class_index(name.split(":", 1)[1]))
    raise ValueError(f"unknown objective {name!r}; use 'untargeted' or 'targeted:down|flat|up'")
