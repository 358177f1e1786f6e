"""The batch columns an objective reads, declared on the objective and checked before training.

    @reads("tokens", "mask", "loss_mask", "weight", optional=("margin",))
    def objective(params, batch, rng): ...

    objective.columns            # ("tokens", "mask", "loss_mask", "weight"): required
    objective.optional_columns   # ("margin",): read when the batch has them
    check_columns(objective, batch.keys(), "config.data.eval")   # ValueError naming what lacks
"""

from __future__ import annotations

from typing import Callable, Iterable


def reads(*columns: str, optional: Iterable[str] = ()) -> Callable:
    """Decorator: sets `columns` (required batch keys) and `optional_columns` on an objective."""

    def mark(objective: Callable) -> Callable:
        objective.columns = tuple(columns)
        objective.optional_columns = tuple(optional)
        return objective

    return mark


def objective_name(objective: Callable) -> str:
    """The factory an objective came from: "preference_objective" for its inner function."""
    return getattr(objective, "__qualname__", repr(objective)).split(".<locals>")[0]


def check_columns(objective: Callable, batch_keys: Iterable[str], where: str) -> None:
    """ValueError naming the objective and the required columns that `batch_keys` lacks."""
    if not hasattr(objective, "columns"):
        raise TypeError(f"{where}: objective {objective_name(objective)} declares no columns "
                        f"(decorate it with jaxalign.objectives.reads)")
    keys = set(batch_keys)
    missing = [c for c in objective.columns if c not in keys]
    if missing:
        raise ValueError(f"{where}: objective {objective_name(objective)} reads columns "
                         f"{missing} that the batch lacks (batch columns: {sorted(keys)})")
