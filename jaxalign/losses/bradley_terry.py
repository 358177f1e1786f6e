"""The Bradley-Terry reward-model loss on scalar rewards (a reward model's scores of a pair).

    loss_B, metrics = bradley_terry_loss(chosen_rewards=r_w, rejected_rewards=r_l, margin=m)

`-log sigma(r_w - r_l - m)`: the Bradley-Terry likelihood P(y_w > y_l) = sigma(r_w - r_l), with
an optional margin m (a constant or per pair, as Llama 2's reward models).
"""

from __future__ import annotations

import jax
from jaxtyping import Array, Float

from jaxalign.losses import _checks
from jaxalign.losses.pair import pair_metrics


def bradley_terry_loss(*, chosen_rewards: Float[Array, "B"], rejected_rewards: Float[Array, "B"],
                       margin: Float[Array, "B"] | float = 0.0):
    """`(-log sigma(r_w - r_l - m) [B], metrics)`, float32; metrics as `pair_metrics`.

    `margin` m: a scalar or [B] (a larger m asks for a larger gap; Llama 2 eq. (2)).
    """
    _checks.check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    r_w = _checks.at_least_f32(chosen_rewards)
    r_l = _checks.at_least_f32(rejected_rewards)
    z = r_w - r_l - _checks.at_least_f32(margin)
    return jax.nn.softplus(-z), pair_metrics(r_w, r_l)  # -log sigma(z), Bradley-Terry
