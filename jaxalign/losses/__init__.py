"""Pure-functional losses of jaxalign: arrays in, `(per_example_loss, metrics)` out.

Losses import only jax/numpy and each other. Arguments are keyword-only; the caller reduces
(mean over the examples whose weight/mask is nonzero). Everything is computed in float32
(float64 if given float64).
Full page with metrics and choices: docs/losses.md.

Log-probs (`logprobs.py`), computed once, separately from every loss:
  token_logprobs(logits_BxTxV, targets_BxT)           log softmax(z)[y], float32
  token_logprobs_from_hidden(hidden_BxTxD, unembed_DxV, targets_BxT, bias_V)  same, chunked
      over T and recomputed per chunk in the backward pass: never materialises [B, T, V]
  shifted_token_logprobs(tokens_BxT, logits_BxTxV, completion_mask_BxT)  logits[t] -> token t+1,
      returns ([B, T-1] masked log-probs, mask = completion_mask[:, 1:])
  shifted_token_logprobs_from_hidden(...)             same from hidden states
  sequence_logprobs(token_logps_BxT, mask_BxT)        l(y) = sum, lbar(y) = l/|y|, |y|

Notation: r(y) = l_theta(y) - l_ref(y), h = r(y_w) - r(y_l), lbar = l/|y|, sigma = logistic,
-log sigma(z) computed as softplus(-z).

Per-example losses, by registry name (`get_loss(name)`; `list_losses()`):

  dpo.sigmoid                -log sigma(beta h)                     DPO eq. (7), arXiv 2305.18290
  dpo.cdpo                   (1-eps) sp(-beta h) + eps sp(beta h)   cDPO (Mitchell 2023 note)
  dpo.robust                 [(1-eps) sp(-beta h) - eps sp(beta h)] / (1 - 2 eps)
                                                                    rDPO, arXiv 2403.00409
  dpo.ipo                    (h - 1/(2 beta))^2, summed log-probs   IPO eq. (17), arXiv 2310.12036
  dpo.ipo_length_normalized  (r_w/|y_w| - r_l/|y_l| - 1/(2 beta))^2 (TRL)
  dpo.hinge                  relu(1 - beta h)                       SLiC 2305.10425 / RSO 2309.06657
  dpo.simpo                  -log sigma(beta (lbar_w - lbar_l) - gamma)
                                                                    SimPO eq. (6), arXiv 2405.14734
  dpo.orpo                   -lbar_w - beta log sigma(log odds(y_w) - log odds(y_l)),
                             log odds = lbar - log(1 - exp(lbar))   ORPO eq. (6)-(7), 2403.07691
  dpo.reference_free         -log sigma(beta (l_w - l_l))           DPO with l_ref = 0
  sppo.sppo                  1/2 [(r_w - eta (P_w - 1/2))^2 + (r_l - eta (P_l - 1/2))^2],
                             eta = 1/beta                           SPPO eq. (3.6), 2405.00675
  sppo.single                1/2 [(r_w - eta (P - 1/2))^2 + (r_l + eta (P - 1/2))^2]  uclaml/SPPO
  sppo.hard                  (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2             TRL
  cgpo.crpg                  -sg(R~_i - mean_j R~_j) log pi(a_i|s),
                             R~ = max(1 - log(pi/pi_ref)/KL_max, 0) R_cr   CGPO eq. (11)-(12)
  cgpo.codpo                 -w [log sigma(beta h) + (lambda/|a+|) log pi(a+|s)]  CGPO eq. (14)
  cgpo.crraft                -w sg(R_calib(s, a*)) log pi(a*|s)     CGPO eq. (17)-(18), 2409.20370
  rest.thresholded_nll       1{R > tau} (-log pi(y|x)); tau = -inf is BC   ReST, 2308.08998
  genarm.arm                 -log sigma(beta_r (l_r(y_w) - l_r(y_l)) - gamma)  GenARM, 2410.08193

(sp = softplus, sg = stop_gradient, w = selection weight.)

Pure helpers: sppo.win_rates_from_scores / win_rates_from_matrix (y_w, y_l, P_w, P_l with the
diagonal 1/2, as uclaml/SPPO), cgpo.calibrated_reward (sigma(r - r(a_bar))),
cgpo.constrained_reward (R_calib * 1[all judges pass]), cgpo.all_judges_pass, cgpo.codpo_select,
cgpo.crraft_select, rest.source_percentile_thresholds, dpo.log1mexp.

Pairwise metrics ([B], stop-gradiented): chosen_reward, rejected_reward (beta * r; beta * lbar
for SimPO and ORPO, beta * r/|y| for length-normalised IPO, beta * l for reference-free DPO and
GenARM), reward_margin, reward_accuracy.
"""

from jaxalign.losses import cgpo, dpo, genarm, logprobs, rest, sppo
from jaxalign.losses.cgpo import (all_judges_pass, calibrated_reward, codpo_select,
                                  constrained_reward, crraft_select)
from jaxalign.losses.logprobs import (SequenceLogprobs, sequence_logprobs,
                                      shifted_token_logprobs, shifted_token_logprobs_from_hidden,
                                      token_logprobs, token_logprobs_from_hidden)
from jaxalign.losses.registry import get_loss, list_losses
from jaxalign.losses.rest import source_percentile_thresholds
from jaxalign.losses.sppo import WinRates, win_rates_from_matrix, win_rates_from_scores

__all__ = [
    "SequenceLogprobs", "WinRates", "all_judges_pass", "calibrated_reward", "cgpo",
    "codpo_select", "constrained_reward", "crraft_select", "dpo", "genarm", "get_loss",
    "list_losses", "logprobs", "rest", "sequence_logprobs", "shifted_token_logprobs",
    "shifted_token_logprobs_from_hidden", "source_percentile_thresholds", "sppo",
    "token_logprobs", "token_logprobs_from_hidden", "win_rates_from_matrix",
    "win_rates_from_scores",
]
