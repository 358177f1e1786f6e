"""ARGS decoding (Khanov et al. 2024, "ARGS: Alignment as Reward-Guided Search"), compiled.

At every step a trajectory-level reward model scores the policy's k most likely next tokens,

    score(v) = z(v | x, y_<t) + w * r([x, y_<t, v])   for v in top-k(z), -inf elsewhere  (eq. 2)

and the token is chosen from the scores by the selection rule: greedy (ARGS-greedy) or softmax
(score / T) (ARGS-stochastic). z are the policy's logits, as the official code adds them
(deeplearning-wisc/args); log-probabilities differ from them by a constant per row, so both
give the same choice and the same distribution.

    state = prefill(params, reward_params, w, tokens_BxP, mask_BxP, ids_B, budget_B, seed,
                    policy=LM(cfg), reward=rm, settings=Settings(..., k=10))
    state = decode(params, reward_params, w, state, policy=..., reward=..., settings=...)

The reward model runs in the same compiled step with its own KV cache (the prompt and the tokens
chosen so far): the k candidates go through it as one `candidates=True` call (each sees the
cache and itself), and the chosen one's keys and values are kept by `commit_candidate`. A step
costs one policy token and k reward-model tokens, and copies neither cache. Rows, random keys
(seed, prompt id, sample index), stop rules and the State are loop.py's; `logprobs` are under the
ARGS distribution (0 when greedy), `model_logprobs` under the policy. `w` is a runtime array:
sweeping it does not recompile.

`reward` is any hashable step function with `RewardStep`'s interface; jaxalign/reward/args.py
adapts the scalar reward model (decoder + linear head) of jaxalign/reward/model.py.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Protocol

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign.models import KVCache, commit_candidate, positions_from_mask
from jaxalign.sampling import loop, selection
from jaxalign.sampling.loop import LM, State


class RewardStep(Protocol):
    """A reward model as the loop sees it: a static (hashable) step function with a KV cache."""

    def init_cache(self, batch: int, length: int) -> KVCache: ...

    def __call__(self, params, tokens_BxT, positions_BxT, mask_BxT, cache: KVCache, *,
                 candidates: bool = False) -> tuple[jax.Array, KVCache]:
        """(rewards [B, T] float32: r of the sequence ending at each token, the cache).

        candidates: the T tokens are alternatives for one position (`Transformer` candidates).
        """


@dataclasses.dataclass(frozen=True)
class Settings(loop.Settings):
    """loop.Settings and the number of candidates the reward model scores per step."""

    k: int = 10


def args_scores(z_RxV, cand_RxK, r_RxK, w, vocab_size: int):
    """ARGS eq. (2) on the vocabulary: z + w * r on the candidates, -inf on every other token."""
    R = z_RxV.shape[0]
    s_RxK = jnp.take_along_axis(z_RxV, cand_RxK, axis=-1) + w * r_RxK.astype(jnp.float32)
    s_RxV = jnp.full(z_RxV.shape, selection.NEG_INF, jnp.float32)
    return selection.mask_vocab(s_RxV.at[jnp.arange(R)[:, None], cand_RxK].set(s_RxK),
                                vocab_size)


def _record(state: State, z_RxV, s_RxV, r_RxK, settings: Settings) -> State:
    """Chooses each row's token from the scores by the rule and records it (`loop.record`: same
    per-step keys, stop and budget rules, non-finite rows failed); model_logprobs from the
    policy's logits."""
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.keys, state.step)
    tok_R, lp_R = selection.choose(step_keys, s_RxV, settings.rule)
    model_lp_R = selection.token_logprob(z_RxV, tok_R)
    valid_R = loop.valid_logits(z_RxV) & jnp.isfinite(r_RxK).all(-1)
    return loop.record(state, tok_R, lp_R, model_lp_R, jnp.zeros((tok_R.shape[0], 0)),
                       valid_R, settings)


def _search(state: State, z_RxV, reward_params, w, *, reward: RewardStep,
            settings: Settings) -> State:
    """Scores the policy's top-k with the reward model, chooses a token per row, commits it."""
    live_R = ~state.done
    R, K = z_RxV.shape[0], settings.k
    _, cand_RxK = jax.lax.top_k(selection.mask_vocab(z_RxV, settings.vocab_size), K)
    pos_RxK = jnp.broadcast_to(
        jnp.where(live_R, state.prompt_lengths + state.step, 0)[:, None], (R, K))
    r_RxK, cache = reward(reward_params, cand_RxK, pos_RxK,
                          jnp.broadcast_to(live_R[:, None], (R, K)), state.caches[1],
                          candidates=True)
    state = _record(state, z_RxV, args_scores(z_RxV, cand_RxK, r_RxK, w, settings.vocab_size),
                    r_RxK, settings)
    tok_R = jax.lax.dynamic_index_in_dim(state.tokens, state.step - 1, axis=1, keepdims=False)
    choice_R = jnp.argmax(cand_RxK == tok_R[:, None], axis=-1)  # a finished row: invalid slot
    return state.replace(caches=(state.caches[0], commit_candidate(cache, choice_R, live_R)))


def _prefill(params, reward_params, w, tokens_BxP, mask_BxP, prompt_ids_B, budget_B, seed, *,
             policy: LM, reward: RewardStep, settings: Settings,
             mesh: Mesh | None = None) -> State:
    """Both models over the left-padded prompts; each row's first token chosen by ARGS."""
    loop.TRACES["args_prefill"] += 1
    B, P = tokens_BxP.shape
    n, N = settings.n, settings.max_new_tokens
    S = P + N - 1  # as loop.py; the reward model also holds the last step's k candidates
    positions_BxP = positions_from_mask(mask_BxP)
    z_BxV, cache = policy(params, tokens_BxP, positions_BxP, mask_BxP, policy.init_cache(B, S))
    _, r_cache = reward(reward_params, tokens_BxP, positions_BxP, mask_BxP,
                        reward.init_cache(B, S + settings.k))
    rows = lambda c: c.map_rows(lambda x, axis: loop._rows(x, n, axis))

    # keys and budgets exactly as loop._prefill: the same reproducibility contract
    state = loop.initial_state(prompt_ids_B, budget_B, mask_BxP, seed,
                               (rows(cache), rows(r_cache)), settings)
    state = _search(state, loop._rows(z_BxV, n), reward_params, w, reward=reward,
                    settings=settings)
    return loop._constrain(state, mesh)


def _decode(params, reward_params, w, state: State, *, policy: LM, reward: RewardStep,
            settings: Settings) -> State:
    """ARGS steps until every row is done or the policy's cache is full."""
    loop.TRACES["args_decode"] += 1

    def cond(state: State):
        cache = state.caches[0]
        return ~jnp.all(state.done) & (cache.index < cache.max_len)

    def body(state: State):
        last_Rx1, positions_Rx1, live_Rx1 = loop.last_tokens(state)
        z_RxV, cache = policy(params, last_Rx1, positions_Rx1, live_Rx1, state.caches[0])
        state = state.replace(caches=(cache, state.caches[1]))
        return _search(state, z_RxV, reward_params, w, reward=reward, settings=settings)

    return jax.lax.while_loop(cond, body, state)


@functools.cache
def compiled(compiler_options: tuple[tuple[str, str], ...] = ()):
    """(prefill, decode) jitted with these XLA compiler options; `decode` donates the state."""
    opts = dict(compiler_options) or None
    static = ("policy", "reward", "settings", "mesh")
    return (jax.jit(_prefill, static_argnames=static, compiler_options=opts),
            jax.jit(_decode, static_argnames=static[:3], donate_argnames=("state",),
                    compiler_options=opts))


prefill, decode = compiled()
