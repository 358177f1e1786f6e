"""Losses by name: `get_loss("dpo.sigmoid")`, `list_losses()`.

Each entry is a function `(**arrays_and_hparams) -> (per_example_loss, metrics)`. Families share
a signature (see each module), so swapping the name is all a config needs to do.
"""

from __future__ import annotations

import types
from typing import Callable

from jaxalign.losses import cgpo, dpo, genarm, pairwise, rest, sppo

_LOSSES: types.MappingProxyType[str, Callable] = types.MappingProxyType({
    "dpo.sigmoid": dpo.sigmoid,
    "dpo.cdpo": dpo.cdpo,
    "dpo.robust": dpo.robust,
    "dpo.ipo": dpo.ipo,
    "dpo.ipo_length_normalized": dpo.ipo_length_normalized,
    "dpo.hinge": dpo.hinge,
    "dpo.simpo": dpo.simpo,
    "dpo.orpo": dpo.orpo,
    "dpo.reference_free": dpo.reference_free,
    "dpo.nca_pair": pairwise.nca_pair,
    "dpo.bco_pair": pairwise.bco_pair,
    "dpo.exo_pair": pairwise.exo_pair,
    "dpo.apo_zero": pairwise.apo_zero,
    "dpo.apo_down": pairwise.apo_down,
    "dpo.sigmoid_norm": pairwise.sigmoid_norm,
    "dpo.discopop": pairwise.discopop,
    "sppo.sppo": sppo.sppo,
    "sppo.single": sppo.sppo_single,
    "sppo.hard": sppo.sppo_hard,
    "cgpo.crpg": cgpo.crpg,
    "cgpo.codpo": cgpo.codpo,
    "cgpo.crraft": cgpo.crraft,
    "rest.thresholded_nll": rest.thresholded_nll,
    "genarm.arm": genarm.arm,
})


def list_losses() -> list[str]:
    """All registered loss names, sorted."""
    return sorted(_LOSSES)


def get_loss(name: str) -> Callable:
    """The loss registered under `name`; ValueError listing the valid names otherwise."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(
            f"Unknown loss {name!r}. Valid names: {', '.join(list_losses())}.") from None
