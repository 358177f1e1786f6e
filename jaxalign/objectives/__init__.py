"""Training objectives: `objective(params, batch, rng) -> (loss_B, weight_B, metrics)`.

Each is built by a factory (`preference_objective(cfg, loss=..., ...)`) and minimised by the
shared train step (`jaxalign.train`) as `sum(weight * loss) / sum(batch weight)`. An objective
names the batch columns it reads (`objective.columns`, `objective.optional_columns`, set by
`@reads`); `check_columns(objective, batch.keys(), where)` says which ones a batch lacks.

preference.py     the DPO family and GenARM's ARM on (chosen, rejected) pairs; reference
                  log-probs on the fly or precomputed
sft.py            maximum likelihood of completions; token or example weights
bradley_terry.py  a scalar reward model on pairs (`jaxalign.reward.model`); held-out accuracy
rest.py           ReST's improve step: thresholded NLL on rows with a `reward` column
policy_gradient.py  online RL (RLOO): clipped policy gradient with given advantages
columns.py        `reads` and `check_columns`

Objectives import `models`, `reward`, `losses` and `data`, never `sampling`, `train` or the
loops above them (tests/test_layers.py). `get_objective(name)` looks one up in `OBJECTIVES`.
"""

from jaxalign.objectives.bradley_terry import (bradley_terry_loss, bradley_terry_objective,
                                               pairwise_accuracy)
from jaxalign.objectives.columns import check_columns, objective_name, reads
from jaxalign.objectives.preference import (precompute_reference_logps, preference_objective,
                                            with_reference_logps)
from jaxalign.objectives.policy_gradient import policy_gradient_objective
from jaxalign.objectives.rest import rest_objective
from jaxalign.objectives.sft import example_weight, sft_objective, token_weight

# name -> factory of an objective (each factory's own arguments: see its docstring)
OBJECTIVES = {
    "preference": preference_objective,
    "sft": sft_objective,
    "bradley_terry": bradley_terry_objective,
    "rest": rest_objective,
    "policy_gradient": policy_gradient_objective,
}


def get_objective(name: str):
    """The factory registered as `name` in `OBJECTIVES`."""
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; valid names: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


__all__ = [
    "OBJECTIVES", "bradley_terry_loss", "bradley_terry_objective", "check_columns",
    "example_weight", "get_objective", "objective_name", "pairwise_accuracy",
    "policy_gradient_objective",
    "precompute_reference_logps", "preference_objective", "reads", "rest_objective",
    "sft_objective",
    "token_weight", "with_reference_logps",
]
