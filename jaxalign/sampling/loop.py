"""The compiled sampling loop: one prefill over the prompts, then a `while_loop` of 1-token steps.

    state = prefill(params, guide_params, alphas_G, tokens_BxP, mask_BxP, ids_B, budget_B, seed,
                    policy=LM(cfg), guides=(LM(arm_cfg),), settings=settings)
    state = decode(params, guide_params, alphas_G, state, ...)  # donates `state`

Rows: each of the B prompts is prefilled once; its KV cache is then repeated for its n samples,
so row r = b * n + j is sample j of prompt b (R = B * n rows). The cache has P + max_new - 1
slots, so "the cache is full" and "max_new_tokens produced" are the same event; every row also
has its own budget (max_len - prompt length, capped at max_new; 0 for batch padding rows).

Randomness: row r's key is fold_in(fold_in(key(seed), prompt_id), sample_index), and step t
draws with fold_in(row key, t): a prompt's completions do not depend on the batch it is in,
its padding, the batch size or the number of devices (its floats only in their last bits, from
how XLA blocks a matmul for a given shape: see BATCH_INVARIANT_CPU).

Guides (GenARM guided decoding, Xu et al. 2024): each guide is another causal LM, an
autoregressive reward model (ARM) pi_r_i, run in the same compiled step with its own KV cache.
Per token the policy's logits z_base are steered (selection.guided_logits), then temperature T
and the filters apply as usual. `Settings.guide_convention` picks the scale:

  "paper" (default):  z = z_base + sum_i alpha_i * log_softmax(z_arm_i)
                      i.e. (pi_base * prod_i pi_r_i^alpha_i)^(1/T), normalised per token.
  "official":         z = (z_base + sum_i alpha_i * log_softmax(z_arm_i)) / (1 + sum_i alpha_i)
                      as the official GenARM scripts compute it. They also pass temperature
                      T / (1 + alpha), which makes it the paper's distribution; with the
                      user's T unchanged it is the flatter geometric mean
                      (pi_base * prod_i pi_r_i^alpha_i)^(1 / (T (1 + sum_i alpha_i))).

The alphas are a runtime array [G] (sweeping them does not recompile); z_base stays
un-normalised and a guide with alpha_i == 0 adds exactly 0, so alpha = 0 reproduces unguided
sampling bit for bit. State.guide_logprobs records log pi_r_i(y_t | x, y_<t) of each chosen token
(the log-softmax over the vocabulary the models share): summed over t it is GenARM's r_i(x, y).
Guides share the policy's tokenizer; without `Settings.crop_vocab` every model has the policy's
vocabulary size V, with it every model's logits are cut to the first `vocab_size` ids.

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
    guide_convention: str = "paper"  # a key of selection.GUIDE_CONVENTIONS (see above)
    crop_vocab: bool = False  # every model's logits cut to [:vocab_size] (guides' V may differ)

    def __post_init__(self):
        if self.guide_convention not in selection.GUIDE_CONVENTIONS:
            names = sorted(selection.GUIDE_CONVENTIONS)
            raise ValueError(f"guide_convention must be one of {names}, "
                             f"got {self.guide_convention!r}")


@flax.struct.dataclass
class State:
    step: jax.Array  # [] int32: tokens produced so far by every row (= next column to write)
    tokens: jax.Array  # [R, N] int32: generated tokens, pad_id after a row ends
    logprobs: jax.Array  # [R, N] float32: under the sampling distribution (0 after the end)
    model_logprobs: jax.Array  # [R, N] float32: under the unmodified policy
    guide_logprobs: jax.Array  # [R, G, N] float32: log pi_r_i of the token under guide i
    lengths: jax.Array  # [R] int32: tokens generated, the stop token included
    done: jax.Array  # [R] bool
    stopped: jax.Array  # [R] bool: ended on a stop id (else: budget or cache exhausted)
    budget: jax.Array  # [R] int32: most tokens the row may generate
    prompt_lengths: jax.Array  # [R] int32: real prompt tokens (next position: this + step - 1)
    keys: jax.Array  # [R] PRNG keys, one per (prompt, sample)
    # [R] int32: the step whose logits or log-probs were not finite (-1: none); see `record`
    failed_at: jax.Array
    caches: tuple  # KVCache of the policy, then of each guide


def _select(state: State, z_policy_BxV, z_guides, alphas_G, settings: Settings):
    """Steer the logits, choose a token per row, record it: the step shared by both phases."""
    V = settings.vocab_size if settings.crop_vocab else z_policy_BxV.shape[-1]
    guide_lps = tuple(jax.nn.log_softmax(z[:, :V], axis=-1) for z in z_guides)
    z_BxV = selection.guided_logits(z_policy_BxV[:, :V], guide_lps, alphas_G,
                                    settings.guide_convention)
    z_BxV = selection.mask_vocab(z_BxV, settings.vocab_size)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.keys, state.step)
    tok_R, lp_R = selection.choose(step_keys, z_BxV, settings.rule)
    model_lp_R = selection.token_logprob(z_policy_BxV, tok_R)  # the uncropped policy
    take = lambda lp_BxV: jnp.take_along_axis(lp_BxV, tok_R[:, None], axis=-1)[:, 0]
    guide_lp_RxG = (jnp.stack([take(lp) for lp in guide_lps], axis=1) if guide_lps
                    else jnp.zeros((tok_R.shape[0], 0), jnp.float32))
    valid_R = valid_logits(z_policy_BxV)
    for z in z_guides:
        valid_R &= valid_logits(z[:, :V])
    return record(state, tok_R, lp_R, model_lp_R, guide_lp_RxG, valid_R, settings)


def valid_logits(z_BxV):
    """[B] bool: the row has no NaN and no +inf logit (-inf is a masked token)."""
    return (z_BxV < jnp.inf).all(-1)  # NaN < inf is False


def record(state: State, tok_R, lp_R, model_lp_R, guide_lp_RxG, valid_R,
           settings: Settings) -> State:
    """Writes each live row's chosen token and log-probs at column `step` (every decoding rule's
    last part: stop ids, budgets, ends).

    valid_R: the row's logits (every model's) were valid (`valid_logits`). A row whose logits,
    chosen token (outside [0, vocab_size): what argmax returns over NaN), log-probs (finite) or
    guide log-probs (-inf allowed: a guide with alpha 0 may give the token probability 0) are
    not valid ends there with `failed_at` = step and pad_id written: nothing invalid is fed
    back, and the host raises (`Sampler`) instead of returning it.
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
    n, N = settings.n, settings.max_new_tokens
    R = prompt_ids_B.shape[0] * n
    sample_idx_R = jnp.tile(jnp.arange(n, dtype=jnp.uint32), R // n)
    fold = jax.vmap(jax.random.fold_in)
    keys_R = fold(fold(jnp.broadcast_to(jax.random.key(seed), (R,)), _rows(prompt_ids_B, n)),
                  sample_idx_R)
    budget_R = _rows(budget_B, n)
    return State(
        step=jnp.zeros((), jnp.int32),
        tokens=jnp.full((R, N), settings.pad_id, jnp.int32),
        logprobs=jnp.zeros((R, N), jnp.float32),
        model_logprobs=jnp.zeros((R, N), jnp.float32),
        guide_logprobs=jnp.zeros((R, num_guides, N), jnp.float32),
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


def _prefill(params, guide_params, alphas_G, tokens_BxP, mask_BxP, prompt_ids_B, budget_B,
            seed, *, policy: LM, guides: tuple[LM, ...], settings: Settings,
            mesh: Mesh | None = None) -> State:
    """Runs every model over the left-padded prompts and chooses each row's first token."""
    TRACES["prefill"] += 1
    B, P = tokens_BxP.shape
    n, N = settings.n, settings.max_new_tokens
    S = P + N - 1  # the last token chosen is never fed back
    positions_BxP = positions_from_mask(mask_BxP)
    logits, caches = [], []
    for lm, p in zip((policy,) + guides, (params,) + tuple(guide_params)):
        z_BxV, cache = lm(p, tokens_BxP, positions_BxP, mask_BxP, lm.init_cache(B, S))
        logits.append(_rows(z_BxV, n))
        caches.append(cache.map_rows(lambda x, axis: _rows(x, n, axis)))

    state = initial_state(prompt_ids_B, budget_B, mask_BxP, seed, tuple(caches), settings,
                          num_guides=len(guides))
    return _constrain(_select(state, logits[0], logits[1:], alphas_G, settings), mesh)


def _decode(params, guide_params, alphas_G, state: State, *, policy: LM,
           guides: tuple[LM, ...], settings: Settings) -> State:
    """One-token steps until every row is done or the cache is full."""
    TRACES["decode"] += 1
    lms = (policy,) + guides
    all_params = (params,) + tuple(guide_params)

    def cond(state: State):
        cache = state.caches[0]
        return ~jnp.all(state.done) & (cache.index < cache.max_len)

    def body(state: State):
        last_Rx1, positions_Rx1, live_Rx1 = last_tokens(state)
        logits, caches = [], []
        for lm, p, cache in zip(lms, all_params, state.caches):
            z_BxV, cache = lm(p, last_Rx1, positions_Rx1, live_Rx1, cache)
            logits.append(z_BxV)
            caches.append(cache)
        state = state.replace(caches=tuple(caches))
        return _select(state, logits[0], logits[1:], alphas_G, settings)

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
    static = ("policy", "guides", "settings", "mesh")
    return (jax.jit(_prefill, static_argnames=static, compiler_options=opts),
            jax.jit(_decode, static_argnames=static[:3], donate_argnames=("state",),
                    compiler_options=opts))


prefill, decode = compiled()
