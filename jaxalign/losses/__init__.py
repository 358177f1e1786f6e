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
  dpo.orpo                   -lbar_w - lambda log sigma(log odds(y_w) - log odds(y_l)),
                             log odds = lbar - log(1 - exp(lbar))   ORPO eq. (6)-(7), 2403.07691
  dpo.reference_free         -log sigma(beta (l_w - l_l))           DPO with l_ref = 0
  dpo.nca_pair, dpo.bco_pair, dpo.exo_pair, dpo.apo_zero, dpo.apo_down, dpo.sigmoid_norm,
  dpo.discopop               TRL's other pairwise losses, same signature (`pairwise.py`)
  Not here: TRL's `aot`/`aot_unpaired` (sort across the batch: no per-example loss, wrong under
  accumulation and multi-host), its f-divergence variants and its multi-loss weighting.
  sppo.sppo                  1/2 [(r_w - eta (P_w - 1/2))^2 + (r_l - eta (P_l - 1/2))^2],
                             eta (or beta = 1/eta)                  SPPO eq. (3.6), 2405.00675
  sppo.single                1/2 [(r_w - eta (P - 1/2))^2 + (r_l + eta (P - 1/2))^2]  uclaml/SPPO
  sppo.hard                  (r_w - eta/2)^2 + (r_l + eta/2)^2                       TRL
  cgpo.crpg                  -sg(R~_i - mean_j R~_j) log pi(a_i|s),
                             R~ = max(1 - log(pi/pi_ref)/KL_max, 0) R_cr   CGPO eq. (11)-(12)
  cgpo.codpo                 -w [log sigma(beta h) + (lambda/|a+|) log pi(a+|s)]  CGPO eq. (14)
  cgpo.crraft                -w sg(R_calib(s, a*)) log pi(a*|s)     CGPO eq. (17)-(18), 2409.20370
  rest.thresholded_nll       1{R > tau} (-log pi(y|x)); tau = -inf is BC   ReST, 2308.08998
  genarm.arm                 -log sigma(beta_r (l_r(y_w) - l_r(y_l)) - gamma)  GenARM, 2410.08193

(sp = softplus, sg = stop_gradient, w = selection weight.)

Each paper's symbol is its keyword: ORPO's `lambda_`, SPPO's `eta`, GenARM's `beta_r`; each is
also accepted as `beta` (the name configs and TRL use; for SPPO beta = 1/eta), never both.

The pairwise losses are written on one value, `pair.PairLogps` (l_w, l_l, the reference's,
|y_w|, |y_l|, with the log-ratios r_w, r_l, h and the length-averaged lbar, rbar as properties);
`pair.pair_loss` gives each the shared keyword signature above and builds the pair once.

Reward models: bradley_terry_loss(chosen_rewards, rejected_rewards, margin)
  -log sigma(r_w - r_l - m)  (Bradley-Terry; margin as Llama 2, arXiv 2307.09288 eq. (2)).

Pure helpers: sppo.win_rates_from_scores / win_rates_from_matrix (y_w, y_l, P_w, P_l with the
diagonal 1/2, as uclaml/SPPO), sppo.bt_preference_matrix (sigma(s_i - s_j)),
cgpo.calibrated_reward (sigma(r - r(a_bar))), cgpo.constrained_reward (R_calib * 1[all judges
pass]), cgpo.all_judges_pass, cgpo.codpo_select, cgpo.crraft_select,
rest.source_percentile_thresholds, dpo.log1mexp.

Online RL (`rloo.py`, RLOO arXiv 2402.14740): rloo.rloo_advantages (r_i - mean_{j != i} r_j
over a prompt's K samples) and rloo.policy_gradient (-min(rho A, clip(rho) A), the sequence
ratio rho = pi/pi_old; without clipping REINFORCE's gradient).

Pairwise metrics ([B], stop-gradiented): chosen_reward, rejected_reward (beta * r; beta * lbar
for SimPO, lambda * lbar for ORPO, beta * r/|y| for length-normalised IPO, beta * l for
reference-free DPO, beta_r * l for GenARM, r / eta for SPPO), reward_margin, reward_accuracy.
"""

from jaxalign.losses import (bradley_terry, cgpo, dpo, genarm, logprobs, pair, pairwise, rest,
                             rloo, sppo)
from jaxalign.losses.bradley_terry import bradley_terry_loss
from jaxalign.losses.cgpo import (all_judges_pass, calibrated_reward, codpo_select,
                                  constrained_reward, crraft_select)
from jaxalign.losses.logprobs import (SequenceLogprobs, sequence_logprobs,
                                      shifted_token_logprobs, shifted_token_logprobs_from_hidden,
                                      token_logprobs, token_logprobs_from_hidden)
from jaxalign.losses.pair import PairLogps, pair_loss, pair_metrics
from jaxalign.losses.registry import get_loss, list_losses
from jaxalign.losses.rest import source_percentile_thresholds
from jaxalign.losses.sppo import WinRates, win_rates_from_matrix, win_rates_from_scores

__all__ = [
    "PairLogps", "SequenceLogprobs", "WinRates", "all_judges_pass", "bradley_terry",
    "bradley_terry_loss", "calibrated_reward", "cgpo",
    "codpo_select", "constrained_reward", "crraft_select", "dpo", "genarm", "get_loss",
    "list_losses", "logprobs", "pairwise", "rest", "rloo", "sequence_logprobs",
    "shifted_token_logprobs",
    "shifted_token_logprobs_from_hidden", "source_percentile_thresholds", "sppo",
    "token_logprobs", "token_logprobs_from_hidden", "win_rates_from_matrix",
    "win_rates_from_scores", "pair", "pair_loss", "pair_metrics",
]
