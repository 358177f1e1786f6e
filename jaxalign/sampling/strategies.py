"""Decode strategies: what one step of the compiled loop computes from the models and their
caches, and how the chosen token is committed. loop.py owns the rest of a step (per-row keys,
`selection.choose`, `record`: stop ids, budgets, failures), the same for every strategy.

    Plain(policy)                       the policy's logits
    Guided(policy, guides, convention)  GenARM: policy + sum_i alpha_i log pi_r_i (fused guides)
    TopKReward(policy, reward, k)       ARGS: the policy's top-k, each scored z + w * r

A strategy is static (frozen, hashable: part of the compiled program's key); its runtime
controls (GenARM's alphas [G], ARGS's weight [1]) are one float32 array, `controls`, so sweeping
them does not recompile. Its params are a tuple: the policy's first, then each other model's.
Its caches are a tuple too, the policy's first (the loop stops when that one is full).

    prefill(params, tokens, positions, mask, length) -> (out, caches)   over the prompts
    forward(params, tokens, positions, mask, caches) -> (out, caches)   one fed-back token
    scores(params, controls, state, out, settings) -> Scores            per-row logits to draw from
    commit(params, caches, scores, tok_R, live_R) -> caches             after the choice
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp

from jaxalign.models import KVCache, commit_candidate
from jaxalign.sampling import selection


class Step(Protocol):
    """A model as the loop sees it: a static (hashable) step function with a KV cache
    (`loop.LM` for a jaxalign Transformer)."""

    def init_cache(self, batch: int, length: int) -> KVCache: ...

    def __call__(self, params, tokens_BxT, positions_BxT, mask_BxT, cache: KVCache):
        """(logits [B, V] float32 of the last position, the cache with T more slots)."""


@flax.struct.dataclass
class Scores:
    """One step's choice inputs for every row R."""

    z_RxV: jax.Array  # the logits `selection.choose` draws from (temperature, filters after)
    policy_RxV: jax.Array  # the policy's own logits: `model_logprobs`
    guide_lps: tuple = ()  # G arrays [R, V'] log pi_r_i: `guide_logprobs` (GenARM)
    valid_R: jax.Array | None = None  # every model's numbers were finite (`loop.record`)
    extra: Any = None  # what `commit` needs (ARGS: the candidates and the reward cache)


def _run(lms, params, tokens, positions, mask, caches):
    outs, new = [], []
    for lm, p, cache in zip(lms, params, caches):
        z_BxV, cache = lm(p, tokens, positions, mask, cache)
        outs.append(z_BxV)
        new.append(cache)
    return tuple(outs), tuple(new)


def valid_logits(z_BxV):
    """[B] bool: the row has no NaN and no +inf logit (-inf is a masked token)."""
    return (z_BxV < jnp.inf).all(-1)  # NaN < inf is False


@dataclasses.dataclass(frozen=True)
class Guided:
    """GenARM guided decoding (Xu et al. 2024): each guide is another causal LM, an
    autoregressive reward model (ARM) pi_r_i, run in the same compiled step with its own KV
    cache. Per token the policy's logits z_base are steered (selection.guided_logits), then
    temperature T and the filters apply as usual. `convention` picks the scale:

      "paper" (default):  z = z_base + sum_i alpha_i * log_softmax(z_arm_i)
                          i.e. (pi_base * prod_i pi_r_i^alpha_i)^(1/T), normalised per token.
      "official":         z = (z_base + sum_i alpha_i * log_softmax(z_arm_i)) / (1 + sum_i alpha_i)
                          as the official GenARM scripts compute it. They also pass temperature
                          T / (1 + alpha), which makes it the paper's distribution; with the
                          user's T unchanged it is the flatter geometric mean
                          (pi_base * prod_i pi_r_i^alpha_i)^(1 / (T (1 + sum_i alpha_i))).

    controls = the alphas [G] (sweeping them does not recompile); z_base stays un-normalised and
    a guide with alpha_i == 0 adds exactly 0, so alpha = 0 reproduces unguided sampling bit for
    bit. State.guide_logprobs records log pi_r_i(y_t | x, y_<t) of each chosen token (the
    log-softmax over the vocabulary the models share): summed over t it is GenARM's r_i(x, y).
    Guides share the policy's tokenizer; without `crop_vocab` every model has the policy's
    vocabulary size V, with it every model's logits are cut to the first `vocab_size` ids.
    Without guides it is plain decoding (`Plain`).
    """

    policy: Step
    guides: tuple[Step, ...] = ()
    convention: str = "paper"
    crop_vocab: bool = False

    def __post_init__(self):
        if self.convention not in selection.GUIDE_CONVENTIONS:
            raise ValueError(f"guide_convention must be one of "
                             f"{sorted(selection.GUIDE_CONVENTIONS)}, got {self.convention!r}")

    @property
    def num_guides(self) -> int:
        return len(self.guides)

    def prefill(self, params, tokens_BxP, positions_BxP, mask_BxP, length: int):
        lms = (self.policy,) + self.guides
        caches = tuple(lm.init_cache(tokens_BxP.shape[0], length) for lm in lms)
        return _run(lms, params, tokens_BxP, positions_BxP, mask_BxP, caches)

    def forward(self, params, tokens_BxT, positions_BxT, mask_BxT, caches):
        return _run((self.policy,) + self.guides, params, tokens_BxT, positions_BxT, mask_BxT,
                    caches)

    def scores(self, params, alphas_G, state, logits, settings) -> Scores:
        z_policy_RxV, z_guides = logits[0], logits[1:]
        V = settings.vocab_size if self.crop_vocab else z_policy_RxV.shape[-1]
        guide_lps = tuple(jax.nn.log_softmax(z[:, :V], axis=-1) for z in z_guides)
        z_RxV = selection.guided_logits(z_policy_RxV[:, :V], guide_lps, alphas_G,
                                        self.convention)
        valid_R = valid_logits(z_policy_RxV)
        for z in z_guides:
            valid_R &= valid_logits(z[:, :V])
        return Scores(selection.mask_vocab(z_RxV, settings.vocab_size), z_policy_RxV, guide_lps,
                      valid_R)

    def commit(self, params, caches, scores: Scores, tok_R, live_R):
        return caches  # every model already read the token it is fed back as


def Plain(policy: Step, crop_vocab: bool = False) -> Guided:
    """Plain decoding: the policy's logits (its vocabulary masked to the tokenizer's), i.e.
    GenARM with no guides: the very program alpha = 0 must reproduce bit for bit."""
    return Guided(policy, (), crop_vocab=crop_vocab)


class RewardStep(Protocol):
    """ARGS's reward model as the loop sees it: a static (hashable) step function with a KV
    cache (jaxalign/reward/args.py adapts the scalar reward model), and what the host needs."""

    vocab_size: int  # ids it embeds
    max_positions: int  # its position table

    def init_cache(self, batch: int, length: int) -> KVCache: ...

    def place(self, params, mesh) -> Any:
        """The params on the mesh, in the layout `__call__` takes (NaN in the backbone refused)."""

    def __call__(self, params, tokens_BxT, positions_BxT, mask_BxT, cache: KVCache, *,
                 candidates: bool = False) -> tuple[jax.Array, KVCache]:
        """(rewards [B, T] float32: r of the sequence ending at each token, the cache).

        candidates: the T tokens are alternatives for one position (`Transformer` candidates).
        """


def args_scores(z_RxV, cand_RxA, r_RxA, w, vocab_size: int):
    """ARGS eq. (2) on the vocabulary: z + w * r on the candidates, -inf on every other token."""
    R = z_RxV.shape[0]
    s_RxA = jnp.take_along_axis(z_RxV, cand_RxA, axis=-1) + w * r_RxA.astype(jnp.float32)
    s_RxV = jnp.full(z_RxV.shape, selection.NEG_INF, jnp.float32)
    return selection.mask_vocab(s_RxV.at[jnp.arange(R)[:, None], cand_RxA].set(s_RxA),
                                vocab_size)


@dataclasses.dataclass(frozen=True)
class TopKReward:
    """ARGS decoding (Khanov et al. 2024, "ARGS: Alignment as Reward-Guided Search"): a
    trajectory-level reward model scores the policy's k most likely next tokens,

        score(v) = z(v | x, y_<t) + w * r([x, y_<t, v])   for v in top-k(z), -inf elsewhere  (eq. 2)

    and the rule chooses from the scores: greedy (ARGS-greedy) or softmax(score / T)
    (ARGS-stochastic). z are the policy's logits, as the official code adds them
    (deeplearning-wisc/args); log-probs differ by a constant per row: same choice, same
    distribution. controls = [w]. The k candidates go through the reward model as one
    `candidates=True` call (each sees the cache and itself) and the chosen one's keys and values
    are kept (`commit_candidate`): a step costs one policy token and k reward-model tokens and
    copies neither cache. `logprobs` are under the ARGS distribution (0 when greedy)."""

    policy: Step
    reward: RewardStep
    k: int = 10

    num_guides = 0

    def prefill(self, params, tokens_BxP, positions_BxP, mask_BxP, length: int):
        B = tokens_BxP.shape[0]
        z_BxV, cache = self.policy(params[0], tokens_BxP, positions_BxP, mask_BxP,
                                   self.policy.init_cache(B, length))
        # the reward model's cache also holds the last step's k candidates
        _, r_cache = self.reward(params[1], tokens_BxP, positions_BxP, mask_BxP,
                                 self.reward.init_cache(B, length + self.k))
        return z_BxV, (cache, r_cache)

    def forward(self, params, tokens_BxT, positions_BxT, mask_BxT, caches):
        z_BxV, cache = self.policy(params[0], tokens_BxT, positions_BxT, mask_BxT, caches[0])
        return z_BxV, (cache, caches[1])  # the reward model read the token when scoring it

    def scores(self, params, w, state, z_RxV, settings) -> Scores:
        live_R = ~state.done
        R, A = z_RxV.shape[0], self.k
        _, cand_RxA = jax.lax.top_k(selection.mask_vocab(z_RxV, settings.vocab_size), A)
        pos_RxA = jnp.broadcast_to(
            jnp.where(live_R, state.prompt_lengths + state.step, 0)[:, None], (R, A))
        r_RxA, r_cache = self.reward(params[1], cand_RxA, pos_RxA,
                                     jnp.broadcast_to(live_R[:, None], (R, A)), state.caches[1],
                                     candidates=True)
        return Scores(args_scores(z_RxV, cand_RxA, r_RxA, w[0], settings.vocab_size), z_RxV,
                      valid_R=valid_logits(z_RxV) & jnp.isfinite(r_RxA).all(-1),
                      extra=(cand_RxA, r_cache))

    def commit(self, params, caches, scores: Scores, tok_R, live_R):
        cand_RxA, r_cache = scores.extra
        choice_R = jnp.argmax(cand_RxA == tok_R[:, None], axis=-1)  # a finished row: any slot
        return caches[0], commit_candidate(r_cache, choice_R, live_R)
