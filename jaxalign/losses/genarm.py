"""GenARM's autoregressive reward model objective (Xu et al. 2024, arXiv 2410.08193).

The ARM is a causal LM pi_r whose reward is r(x, y) = l_r(y) = sum_t log pi_r(y_t | x, y_<t)
(summed, no reference, no length normalisation). Trained on preference pairs with
`-log sigma(beta_r (l_r(y_w) - l_r(y_l)) - gamma)`, gamma = 0 by default.
"""

from __future__ import annotations

import jax

from jaxalign.losses import _checks
from jaxalign.losses.dpo import pair_metrics


def arm(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
        ref_rejected_logps=None, chosen_lengths=None, rejected_lengths=None, beta, gamma=0.0):
    """ARM pairwise loss; `policy_*` are the ARM's summed log-probs, `beta` is beta_r.

    Shares the DPO-family signature (`ref_*` and lengths are ignored). Reported rewards are
    `beta_r * l_r(y)`.
    """
    _checks.check_positive("beta", beta)
    _checks.check_same_shape(policy_chosen_logps=policy_chosen_logps,
                             policy_rejected_logps=policy_rejected_logps)
    l_w = _checks.at_least_f32(policy_chosen_logps)
    l_l = _checks.at_least_f32(policy_rejected_logps)
    loss = jax.nn.softplus(-(beta * (l_w - l_l) - gamma))  # GenARM ARM training objective
    return loss, pair_metrics(beta * l_w, beta * l_l)
