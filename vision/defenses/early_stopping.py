"""Checkpoint selection under attack: robust early stopping on a held-out set, and the catastrophic-overfitting
guard of fast adversarial training (a short PGD check on one fixed training batch after every epoch)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from vision.evaluate import robust_accuracy


def _state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class RobustEarlyStopping:
    """Keep the weights with the best robust accuracy on a held-out set (x in [0, 1] or uint8, y).

    ``update(model, epoch)`` measures and remembers; ``restore(model)`` loads the best weights; with ``patience``,
    ``should_stop`` turns True after that many epochs without improvement.
    """

    def __init__(self, x: Tensor, y: Tensor, attack: Callable, batch_size: int = 256,
                 patience: int | None = None) -> None:
        self.x, self.y, self.attack, self.batch_size, self.patience = x, y, attack, batch_size, patience
        self.best_acc = -1.0
        self.best_epoch = -1
        self.best_state: dict[str, Tensor] | None = None
        self.history: list[float] = []

    def update(self, model: nn.Module, epoch: int) -> float:
        acc = robust_accuracy(model, self.attack, self.x, self.y, self.batch_size)["robust_acc"]
        self.history.append(acc)
        if acc > self.best_acc:
            self.best_acc, self.best_epoch, self.best_state = acc, epoch, _state_copy(model)
        return acc

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and len(self.history) - 1 - self.best_epoch >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


class CatastrophicOverfittingGuard:
    """After each epoch, robust accuracy on one fixed training batch under a short PGD; when it drops by more than
    ``drop`` below the previous epoch's, ``check`` returns True and the previous epoch's weights are restored."""

    def __init__(self, x: Tensor, y: Tensor, attack: Callable, drop: float = 0.2) -> None:
        self.x, self.y, self.attack, self.drop = x, y, attack, float(drop)
        self.prev_acc: float | None = None
        self.prev_state: dict[str, Tensor] | None = None
        self.history: list[float] = []
        self.triggered_epoch: int | None = None

    def check(self, model: nn.Module, epoch: int) -> bool:
        acc = robust_accuracy(model, self.attack, self.x, self.y, len(self.x))["robust_acc"]
        self.history.append(acc)
        if self.prev_acc is not None and acc - self.prev_acc < -self.drop:
            if self.prev_state is not None:
                model.load_state_dict(self.prev_state)
            self.triggered_epoch = epoch
            return True
        self.prev_acc, self.prev_state = acc, _state_copy(model)
        return False

