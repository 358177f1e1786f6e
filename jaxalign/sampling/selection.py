"""Token selection: small pure functions of logits [B, V] (float32), one rule that combines them.

    rule = Rule(temperature=0.7, top_p=0.9)
    z_BxV = guided_logits(z_base_BxV, (log_softmax(z_arm_BxV),), alphas_G, "paper")  # optional
    tokens_B, logprobs_B = choose(keys_B, z_BxV, rule)

The filters are applied in the order Hugging Face's `generate` applies its warpers: temperature,
then top-k, top-p (nucleus), min-p; a filtered-out token gets logit -inf. `logprobs_B` are the
log-probabilities of the chosen tokens under the distribution actually sampled from (after
temperature and filters); with `temperature=0` (greedy) that distribution is a point mass and
the log-probability is 0. Log-probabilities under the unmodified model are `model_logprobs`.

Ties at a threshold are kept (top-k may keep more than k tokens when logits tie exactly).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Rule:
    """How the next token is chosen. Static: part of the compiled program (hashable)."""

    temperature: float = 1.0  # 0: greedy (argmax); the filters below are then irrelevant
    top_k: int = 0  # keep the k most likely tokens; 0: off
    top_p: float = 1.0  # keep the smallest set of most likely tokens with mass >= top_p; 1: off
    min_p: float = 0.0  # keep tokens with probability >= min_p * (top probability); 0: off

    def __post_init__(self):
        # Checked before tracing: a NaN, inf or negative value would make every step's logits
        # non-finite (and the loop would then stop with an error after compiling).
        real = lambda x: isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
            x, (bool, np.bool_))
        if not (real(self.temperature) and 0 <= self.temperature < np.inf):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got "
                             f"{self.temperature!r}")
        if not (real(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if not (real(self.min_p) and 0 <= self.min_p < 1):
            raise ValueError(f"min_p must be a number in [0, 1), got {self.min_p!r}")
        if not (isinstance(self.top_k, (int, np.integer)) and not isinstance(self.top_k, bool)
                and self.top_k >= 0):
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        for name in ("temperature", "top_p", "min_p"):  # plain floats: hashable, one program
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "top_k", int(self.top_k))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def mask_vocab(logits_BxV, vocab_size: int):
    """-inf for ids >= vocab_size: embedding rows past the tokenizer's vocabulary (padding)."""
    if vocab_size >= logits_BxV.shape[-1]:
        return logits_BxV
    ids_V = jnp.arange(logits_BxV.shape[-1])
    return jnp.where(ids_V < vocab_size, logits_BxV, NEG_INF)


def paper_convention(z_BxV, alphas_G):
    """GenARM's distribution as the paper writes it: pi_base * prod_i pi_r_i^alpha_i, as is."""
    del alphas_G
    return z_BxV


def official_convention(z_BxV, alphas_G):
    """The official GenARM scripts' logits: divided by (1 + sum_i alpha_i) (see loop.py)."""
    return z_BxV / (1 + jnp.sum(alphas_G))


# How the steered logits are scaled before temperature; picked by name (`Settings`).
GUIDE_CONVENTIONS = {"paper": paper_convention, "official": official_convention}


def guided_logits(z_BxV, guide_logprobs, alphas_G, convention: str):
    """Logits of pi_base * prod_i pi_r_i^alpha_i (GenARM, Xu et al. 2024), before temperature.

    z_BxV: the base's logits [B, V] float32, un-normalised; guide_logprobs: G arrays [B, V]
    float32, log pi_r_i (each guide's log-softmax over the same V); alphas_G: float32 [G].
    Guide i adds alpha_i * log pi_r_i: exactly 0 where alpha_i == 0 (so alpha = 0 is unguided
    sampling bit for bit, even on ids where pi_r_i = 0) and -inf where pi_r_i = 0 for any other
    alpha_i (an id a model masks stays masked, whatever alpha's sign: never inf - inf = NaN).
    """
    if not guide_logprobs:
        return z_BxV
    for i, lp_BxV in enumerate(guide_logprobs):
        a = alphas_G[i]
        term_BxV = jnp.where(lp_BxV == NEG_INF, NEG_INF, a * lp_BxV)
        z_BxV = z_BxV + jnp.where(a == 0, 0.0, term_BxV)  # GenARM: z_base + sum alpha_i z_arm_i
    return GUIDE_CONVENTIONS[convention](z_BxV, alphas_G)


def argmax(logits_BxV):
    """First index of the maximum, like `jnp.argmax` (and torch), as two plain reductions.

    XLA's CPU argmax is a variadic (value, index) reduction that does not vectorise; max then
    min-index-of-max is ~8x faster at V=32000.
    """
    V = logits_BxV.shape[-1]
    max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
    ids_V = jnp.arange(V, dtype=jnp.int32)
    return jnp.min(jnp.where(logits_BxV == max_Bx1, ids_V, V), axis=-1)


def top_k_filter(logits_BxV, k: int):
    """Keep the k largest logits of each row (and ties with the k-th)."""
    if k <= 0 or k >= logits_BxV.shape[-1]:
        return logits_BxV
    kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][:, -1:]
    return jnp.where(logits_BxV >= kth_Bx1, logits_BxV, NEG_INF)


def top_p_filter(logits_BxV, p: float):
    """Nucleus: keep the most likely tokens down to the first at which their mass reaches p.

    Equivalent to sorting and cutting the cumulative sum (Holtzman et al. 2019; HF's
    TopPLogitsWarper) but without the sort, which costs ~10 ms per row at V=32000 on CPU: the
    threshold t* = max{t : sum(probs >= t) >= p} is found by bisection over the int32 bit
    patterns of float32 probabilities (monotone for non-negative floats): 31 masked sums, exact.
    """
    if p >= 1.0:
        return logits_BxV
    probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
    bits_BxV = jax.lax.bitcast_convert_type(probs_BxV, jnp.int32)
    B = logits_BxV.shape[0]
    lo_B = jnp.zeros((B,), jnp.int32)  # mass(probs >= lo) >= p holds
    hi_B = jnp.full((B,), jnp.int32(0x3F800001))  # bits(1.0) + 1: mass(probs >= hi) = 0 < p

    def halve(_, lo_hi):
        lo_B, hi_B = lo_hi
        mid_B = lo_B + (hi_B - lo_B) // 2
        mass_B = jnp.sum(jnp.where(bits_BxV >= mid_B[:, None], probs_BxV, 0.0), axis=-1)
        ok_B = mass_B >= p
        return jnp.where(ok_B, mid_B, lo_B), jnp.where(ok_B, hi_B, mid_B)

    lo_B, _ = jax.lax.fori_loop(0, 31, halve, (lo_B, hi_B))
    return jnp.where(bits_BxV >= lo_B[:, None], logits_BxV, NEG_INF)


def min_p_filter(logits_BxV, p: float):
    """Keep tokens with prob >= p * max prob, i.e. logit >= max logit + log p (Nguyen et al.)."""
    if p <= 0.0:
        return logits_BxV
    max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
    return jnp.where(logits_BxV >= max_Bx1 + jnp.log(p), logits_BxV, NEG_INF)


def sampling_logits(logits_BxV, rule: Rule):
    """The logits of the distribution sampled from: temperature, then the filters (HF order)."""
    z_BxV = logits_BxV.astype(jnp.float32) / rule.temperature
    z_BxV = top_k_filter(z_BxV, rule.top_k)
    z_BxV = top_p_filter(z_BxV, rule.top_p)
    return min_p_filter(z_BxV, rule.min_p)


def token_logprob(logits_BxV, tokens_B):
    """log softmax(logits)[token] per row, float32."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    chosen_B = jnp.take_along_axis(logits_BxV, tokens_B[:, None], axis=-1)[:, 0]
    return chosen_B - jax.nn.logsumexp(logits_BxV, axis=-1)


def gumbel_sample(keys_B, logits_BxV):
    """One draw per row from softmax(logits): argmax(logits + Gumbel noise), a key per row.

    Row b's draw depends on keys_B[b] and its own logits only (vmap of a threefry key gives the
    same bits as the key alone), so it does not depend on the batch it runs in.
    """
    gumbel_BxV = jax.vmap(lambda k: jax.random.gumbel(k, logits_BxV.shape[-1:]))(keys_B)
    return argmax(logits_BxV + gumbel_BxV)


def choose(keys_B, logits_BxV, rule: Rule):
    """(tokens [B] int32, log-probs [B] float32 under the sampling distribution)."""
    if rule.greedy:
        tokens_B = argmax(logits_BxV)
        return tokens_B, jnp.zeros(tokens_B.shape, jnp.float32)
    z_BxV = sampling_logits(logits_BxV, rule)
    tokens_B = gumbel_sample(keys_B, z_BxV)
    return tokens_B, token_logprob(z_BxV, tokens_B)
