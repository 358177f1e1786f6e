"""The compiled sampling loop: one prefill over the prompts, then a `while_loop` of 1-token steps.

    strategy = strategies.Guided(LM(cfg), (LM(arm_cfg),))     # or Plain(LM(cfg)), TopKReward(...)
    state = prefill((params, arm_params), alphas_G, tokens_BxP, mask_BxP, ids_B, budget_B, seed,
                    strategy=strategy, settings=settings)
    state = decode((params, arm_params), alphas_G, state, strategy=..., settings=...)  # donates

What a step computes from the models and their caches, and how the chosen token is committed,
is the decode strategy's (strategies.py: plain decoding, GenARM's fused guides, ARGS's top-k
reward scoring); the rest of a step is this file's and the same for all: per-row keys, the
selection rule (`selection.choose`), and `record` (stop ids, budgets, failures).

Rows: each of the B prompts is prefilled once; its KV cache is then repeated for its n samples,
so row r = b * n + j is sample j of prompt b (R = B * n rows). The cache has P + max_new - 1
slots, so "the cache is full" and "max_new_tokens produced" are the same event; every row also
has its own budget (max_len - prompt length, capped at max_new; 0 for batch padding rows).

Randomness: row r's key is fold_in(fold_in(key(seed), prompt_id), sample_index), and step t
draws with fold_in(row key, t): a prompt's completions do not depend on the batch it is in,
its padding, the batch size or the number of devices (its floats only in their last bits, from
how XLA blocks a matmul for a given shape: see BATCH_INVARIANT_CPU).

Non-finite logits (NaN or inf weights, an extreme temperature or alpha, positions a model has
no embedding for) never become tokens: a row whose step is not finite ends there with
`State.failed_at` set (`record`), and the Sampler raises naming the prompt and the step.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign.models import (KVCache, ModelConfig, Transformer, init_cache, positions_from_mask,
                             split_layers, stack_layers)
from jaxalign.sampling import selection

# How many times each compiled function was traced (tests assert no recompilation).
TRACES: collections.Counter = collections.Counter()


def decode_layout(cfg: ModelConfig, params):
    """The params as the loop's steps take them: one tree per layer (`split_layers`), or
    stacked when the config scans its layers."""
    return stack_layers(params) if cfg.scan_layers else split_layers(params)


@dataclasses.dataclass(frozen=True)
class LM:
    """A jaxalign `Transformer` as the loop sees it: a step (tokens, cache) -> (logits, cache).

    In the decode layout (`decode_layout` params, per-layer caches: see models/transformer.py),
    unless the config scans its layers (`cfg.scan_layers`: stacked, faster to compile)."""

    cfg: ModelConfig

    def init_cache(self, batch: int, length: int) -> KVCache:
        return init_cache(self.cfg, batch, length, per_layer=not self.cfg.scan_layers)

    def __call__(self, params, tokens_BxT, positions_BxT, mask_BxT, cache: KVCache):
        """Logits [B, V] float32 of the last position only, and the cache with T more slots."""
        model, variables = Transformer(self.cfg), {"params": decode_layout(self.cfg, params)}
        _, cache, hidden_BxTxD = model.apply(variables, tokens_BxT, positions_BxT, mask_BxT,
                                             cache, return_logits=False)
        logits_Bx1xV = model.apply(variables, hidden_BxTxD[:, -1:], method=Transformer.logits)
        return logits_Bx1xV[:, 0], cache


@dataclasses.dataclass(frozen=True)
class Settings:
    """Static settings of one compiled loop (hashable). Shapes come from the arrays."""

    max_new_tokens: int
    rule: selection.Rule
    stop_ids: tuple[int, ...]
    pad_id: int
    vocab_size: int  # the tokenizer's: larger ids (padded embedding rows) are never chosen
    n: int = 1  # samples per prompt


@flax.struct.dataclass
class State:
    step: jax.Array  # [] int32: tokens produced so far by every row (= next column to write)
    tokens: jax.Array  # [R, T] int32: generated tokens, pad_id after a row ends
    logprobs: jax.Array  # [R, T] float32: under the sampling distribution (0 after the end)
    model_logprobs: jax.Array  # [R, T] float32: under the unmodified policy
    guide_logprobs: jax.Array  # [R, G, T] float32: log pi_r_i of the token under guide i
    lengths: jax.Array  # [R] int32: tokens generated, the stop token included
    done: jax.Array  # [R] bool
    stopped: jax.Array  # [R] bool: ended on a stop id (else: budget or cache exhausted)
    budget: jax.Array  # [R] int32: most tokens the row may generate
    prompt_lengths: jax.Array  # [R] int32: real prompt tokens (next position: this + step - 1)
    keys: jax.Array  # [R] PRNG keys, one per (prompt, sample)
    # [R] int32: the step whose logits or log-probs were not finite (-1: none); see `record`
    failed_at: jax.Array
    caches: tuple  # KVCache of the policy, then of each guide


def _step(state: State, params, controls, out, strategy, settings: Settings) -> State:
    """The strategy's scores, a token chosen per row by the rule, recorded, then committed."""
    scores = strategy.scores(params, controls, state, out, settings)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.keys, state.step)
    tok_R, lp_R = selection.choose(step_keys, scores.z_RxV, settings.rule)
    model_lp_R = selection.token_logprob(scores.policy_RxV, tok_R)  # the uncropped policy
    take = lambda lp_RxV: jnp.take_along_axis(lp_RxV, tok_R[:, None], axis=-1)[:, 0]
    guide_lp_RxG = (jnp.stack([take(lp) for lp in scores.guide_lps], axis=1) if scores.guide_lps
                    else jnp.zeros((tok_R.shape[0], 0), jnp.float32))
    new = record(state, tok_R, lp_R, model_lp_R, guide_lp_RxG, scores.valid_R, settings)
    tok_R = jax.lax.dynamic_index_in_dim(new.tokens, state.step, axis=1, keepdims=False)
    return new.replace(caches=strategy.commit(params, new.caches, scores, tok_R, ~state.done))


def record(state: State, tok_R, lp_R, model_lp_R, guide_lp_RxG, valid_R,
           settings: Settings) -> State:
    """Writes each live row's chosen token and log-probs at column `step` (every decoding rule's
    last part: stop ids, budgets, ends).

    valid_R: the row's logits (every model's) were valid (`strategies.valid_logits`). A row
    whose logits, chosen token (outside [0, vocab_size): what argmax returns over NaN),
    log-probs (finite) or guide log-probs (-inf allowed: a guide with alpha 0 may give the token
    probability 0) are not valid ends there with `failed_at` = step and pad_id written: nothing
    invalid is fed back, and the host raises (`Sampler`) instead of returning it.
    """
    live_R = ~state.done
    valid_R &= ((tok_R >= 0) & (tok_R < settings.vocab_size) & jnp.isfinite(lp_R)
                & jnp.isfinite(model_lp_R) & (guide_lp_RxG < jnp.inf).all(-1))
    failed_R = live_R & ~valid_R
    ok_R = live_R & valid_R
    tok_R = jnp.where(ok_R, tok_R, settings.pad_id).astype(jnp.int32)
    put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[..., None],
                                                      (0,) * x.ndim + (state.step,))
    lengths_R = state.lengths + ok_R
    hit_R = ok_R & jnp.isin(tok_R, jnp.asarray(settings.stop_ids, jnp.int32))
    return state.replace(
        step=state.step + 1,
        tokens=put(state.tokens, tok_R),
        logprobs=put(state.logprobs, jnp.where(ok_R, lp_R, 0.0)),
        model_logprobs=put(state.model_logprobs, jnp.where(ok_R, model_lp_R, 0.0)),
        guide_logprobs=put(state.guide_logprobs, jnp.where(ok_R[:, None], guide_lp_RxG, 0.0)),
        lengths=lengths_R,
        stopped=state.stopped | hit_R,
        failed_at=jnp.where(failed_R, state.step, state.failed_at),
        done=state.done | hit_R | failed_R | (lengths_R >= state.budget))


def _rows(x, n: int, axis: int = 0):
    """Prompt-major rows: each prompt's entry repeated for its n samples."""
    return x if n == 1 else jnp.repeat(x, n, axis=axis)


def _constrain(state: State, mesh: Mesh | None) -> State:
    """Rows over the mesh's data/fsdp axes (what `jaxalign.sharding.batch_sharding` does)."""
    if mesh is None:
        return state
    put = lambda x, *lead: jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, PartitionSpec(*lead, ("data", "fsdp"))))
    caches = tuple(c.map_rows(lambda x, axis: put(x, *[None] * axis)) for c in state.caches)
    rows = {f.name: put(getattr(state, f.name)) for f in dataclasses.fields(state)
            if f.name not in ("step", "caches")}
    return state.replace(caches=caches, **rows)


def initial_state(prompt_ids_B, budget_B, mask_BxP, seed, caches: tuple, settings: Settings,
                  num_guides: int = 0) -> State:
    """The state before the first token: R = B * n rows, prompt-major, each row's key
    fold_in(fold_in(key(seed), prompt_id), sample_index) (the reproducibility contract)."""
    n, T = settings.n, settings.max_new_tokens
    R = prompt_ids_B.shape[0] * n
    sample_idx_R = jnp.tile(jnp.arange(n, dtype=jnp.uint32), R // n)
    fold = jax.vmap(jax.random.fold_in)
    keys_R = fold(fold(jnp.broadcast_to(jax.random.key(seed), (R,)), _rows(prompt_ids_B, n)),
                  sample_idx_R)
    budget_R = _rows(budget_B, n)
    return State(
        step=jnp.zeros((), jnp.int32),
        tokens=jnp.full((R, T), settings.pad_id, jnp.int32),
        logprobs=jnp.zeros((R, T), jnp.float32),
        model_logprobs=jnp.zeros((R, T), jnp.float32),
        guide_logprobs=jnp.zeros((R, num_guides, T), jnp.float32),
        lengths=jnp.zeros((R,), jnp.int32),
        done=budget_R <= 0,
        stopped=jnp.zeros((R,), bool),
        budget=budget_R,
        prompt_lengths=_rows(mask_BxP.sum(-1, dtype=jnp.int32), n),
        keys=keys_R,
        failed_at=jnp.full((R,), -1, jnp.int32),
        caches=caches)


def last_tokens(state: State):
    """The next decode step's input: each row's last token [R, 1], its position, and whether
    it is live (finished rows are fed padding, masked out)."""
    last_Rx1 = jax.lax.dynamic_slice_in_dim(state.tokens, state.step - 1, 1, axis=1)
    live_Rx1 = ~state.done[:, None]
    positions_Rx1 = jnp.where(live_Rx1, (state.prompt_lengths + state.step - 1)[:, None], 0)
    return last_Rx1, positions_Rx1, live_Rx1


def _prefill(params, controls, tokens_BxP, mask_BxP, prompt_ids_B, budget_B, seed, *,
             strategy, settings: Settings, mesh: Mesh | None = None) -> State:
    """Runs the strategy's models over the left-padded prompts and chooses each row's first
    token."""
    TRACES["prefill"] += 1
    P, n, T = tokens_BxP.shape[1], settings.n, settings.max_new_tokens
    S = P + T - 1  # the last token chosen is never fed back
    out, caches = strategy.prefill(params, tokens_BxP, positions_from_mask(mask_BxP), mask_BxP, S)
    caches = tuple(c.map_rows(lambda x, axis: _rows(x, n, axis)) for c in caches)
    state = initial_state(prompt_ids_B, budget_B, mask_BxP, seed, caches, settings,
                          num_guides=strategy.num_guides)
    out = jax.tree.map(lambda x: _rows(x, n), out)
    return _constrain(_step(state, params, controls, out, strategy, settings), mesh)


def _decode(params, controls, state: State, *, strategy, settings: Settings) -> State:
    """One-token steps until every row is done or the policy's cache is full."""
    TRACES["decode"] += 1

    def cond(state: State):
        cache = state.caches[0]
        return ~jnp.all(state.done) & (cache.index < cache.max_len)

    def body(state: State):
        last_Rx1, positions_Rx1, live_Rx1 = last_tokens(state)
        out, caches = strategy.forward(params, last_Rx1, positions_Rx1, live_Rx1, state.caches)
        return _step(state.replace(caches=caches), params, controls, out, strategy, settings)

    return jax.lax.while_loop(cond, body, state)


# XLA:CPU's YNNPACK matmuls choose their blocking from the shapes (e.g. how the contraction is
# split over threads), so a row's logits move in their last bits (~1e-6 relative) with the
# number of rows. With these options XLA's own kernels run instead, slower: a row's floats no
# longer depend on the number of rows or devices (only another padding bucket, which changes the
# order of the attention's sums over cache slots, still moves them by ~1e-7 relative).
BATCH_INVARIANT_CPU = (("xla_cpu_experimental_ynn_fusion_type", ""),)


@functools.cache
def compiled(compiler_options: tuple[tuple[str, str], ...] = ()):
    """(prefill, decode) jitted with these XLA compiler options; `decode` donates the state."""
    opts = dict(compiler_options) or None
    static = ("strategy", "settings", "mesh")
    return (jax.jit(_prefill, static_argnames=static, compiler_options=opts),
            jax.jit(_decode, static_argnames=static[:2], donate_argnames=("state",),
                    compiler_options=opts))


prefill, decode = compiled()
