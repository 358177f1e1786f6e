"""ReST improve objective (Gulcehre et al. 2023, arXiv 2308.08998).

`J(theta) = E_{D_g}[1{R(x, y) > tau} L(x, y; theta)]` with L the NLL (the best loss in the
paper). tau is a scalar (tau = -inf gives plain behaviour cloning), per-example thresholds, or
per-source percentiles of the rewards (`source_percentile_thresholds`), all array functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxalign.losses import _checks


def source_percentile_thresholds(
    *, rewards_N: Float[Array, "N"], source_ids_N: Int[Array, "N"], num_sources: int,
    percentile: float, mask_N: Bool[Array, "N"] | None = None,
) -> Float[Array, "num_sources"]:
    """Each source's `percentile` (0-100, linear interpolation as numpy) of its own rewards.

    `num_sources` is static. A source with no (valid) example gets threshold +inf.
    """
    _checks.check_in_range("percentile", percentile, 0.0, 100.0, closed=True)
    _checks.check_positive("num_sources", num_sources)
    _checks.check_rank("rewards_N", rewards_N, 1)
    _checks.check_same_shape(rewards_N=rewards_N, source_ids_N=source_ids_N, mask_N=mask_N)
    valid_N = jnp.ones(rewards_N.shape, bool) if mask_N is None else jnp.asarray(mask_N, bool)
    in_source = (jnp.arange(num_sources)[:, None] == source_ids_N[None, :]) & valid_N
    values = jnp.where(in_source, _checks.at_least_f32(rewards_N), jnp.nan)  # [sources, N]
    thresholds = jnp.nanpercentile(values, percentile, axis=-1)  # [num_sources]
    return jax.lax.stop_gradient(jnp.where(in_source.any(-1), thresholds, jnp.inf))


def thresholded_nll(*, policy_logps, rewards, threshold=None, source_ids=None, percentile=None,
                    num_sources=None, mask=None):
    """`1{R > tau} * (-log pi(y|x))` per example, [B].

    policy_logps: [B] log pi(y|x), summed over completion tokens (pass the per-token mean for a
      length-averaged NLL). rewards: [B].
    threshold: tau, a scalar or [B] (use -inf for behaviour cloning); OR
    source_ids [B] + percentile (0-100) + num_sources: tau = the percentile of the rewards of
      each example's own source, computed on this batch.
    mask: [B] bool, examples to consider (default all); masked examples give exactly 0.
    Metrics [B]: `weight` (1.0 kept / 0.0 dropped), `nll`, `threshold`.
    """
    _checks.check_same_shape(policy_logps=policy_logps, rewards=rewards, source_ids=source_ids,
                             mask=mask)
    by_source = (source_ids, percentile, num_sources)
    if threshold is None and any(v is None for v in by_source):
        raise ValueError("rest.thresholded_nll needs `threshold` (use -inf for behaviour cloning)"
                         " or all of `source_ids`, `percentile`, `num_sources`.")
    if threshold is not None and any(v is not None for v in by_source):
        raise ValueError("Give either `threshold` or `source_ids`/`percentile`/`num_sources`.")
    rewards = _checks.at_least_f32(rewards)
    valid = jnp.ones(rewards.shape, bool) if mask is None else jnp.asarray(mask, bool)
    if threshold is None:
        thresholds = source_percentile_thresholds(
            rewards_N=rewards, source_ids_N=source_ids, num_sources=num_sources,
            percentile=percentile, mask_N=valid)
        tau = thresholds[source_ids]
    else:
        tau = jnp.broadcast_to(_checks.at_least_f32(threshold), rewards.shape)
    kept = valid & (rewards > tau)  # ReST improve step: 1{R(x, y) > tau}
    nll = -_checks.at_least_f32(policy_logps)
    loss = jnp.where(kept, nll, 0.0)  # ReST: J(theta) with L = NLL
    return loss, {"weight": kept.astype(jnp.float32), "nll": jax.lax.stop_gradient(nll),
                  "threshold": tau}
