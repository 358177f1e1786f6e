"""GenARM's autoregressive reward model objective (Xu et al. 2024, arXiv 2410.08193).

The ARM is a causal LM pi_r whose reward is r(x, y) = l_r(y) = sum_t log pi_r(y_t | x, y_<t)
(summed, no reference, no length normalisation). Trained on preference pairs with
`-log sigma(beta_r (l_r(y_w) - l_r(y_l)) - gamma)`, gamma = 0 by default.
"""

from __future__ import annotations

import jax

from jaxalign.losses.pair import PairLogps, pair_loss, pair_metrics


@pair_loss("genarm.arm", scale="beta_r", old="beta")
def arm(p: PairLogps, *, beta_r, gamma=0.0):
    """ARM pairwise loss; `policy_*` are the ARM's summed log-probs l_r(y).

    `beta_r` is the paper's beta_r; `beta`, the name configs use, is accepted instead (never
    both). Shares the DPO-family signature (`ref_*` and lengths are ignored). Reported rewards
    are `beta_r * l_r(y)`.
    """
    loss = jax.nn.softplus(-(beta_r * (p.l_w - p.l_l) - gamma))  # GenARM ARM training objective
    return loss, pair_metrics(beta_r * p.l_w, beta_r * p.l_l)
