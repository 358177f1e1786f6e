"""GenARM guided decoding in the sampler: the exact product distribution against full forwards
of every continuation, per-token ARM rewards, alpha = 0 == unguided bit for bit, -inf vocabulary
entries, runtime alphas, vocabulary checks and cropping (weak-to-strong)."""

import functools

import jax
import numpy as np
import pytest
import transformers as T
from scipy import stats
from tokenizers import Tokenizer, models, pre_tokenizers

from jaxalign.models import ModelConfig, Transformer, param_shapes, positions_from_mask
from jaxalign.sampling import GuideModel, Sampler, loop
from tests.sampling.helpers import SPECIALS, WORDS

V, STOP, PROMPT, NEW = 6, 2, [1, 3, 4], 2  # 1 + 5 * 6 = 31 possible completions
BASE = ModelConfig(family="llama", vocab_size=V, hidden_size=32, num_layers=1, num_heads=4,
                   num_kv_heads=2, intermediate_size=64, max_position_embeddings=16)
ARMS = (  # another family, other sizes, the same vocabulary
    ModelConfig(family="gpt2", vocab_size=V, hidden_size=16, num_layers=1, num_heads=2,
                num_kv_heads=2, intermediate_size=64, max_position_embeddings=16),
    ModelConfig(family="llama", vocab_size=V, hidden_size=16, num_layers=1, num_heads=2,
                num_kv_heads=1, intermediate_size=32, max_position_embeddings=16))
ALPHAS = (1.5, 0.7)
DRAWS = 2000


def random_params(cfg: ModelConfig, seed: int, std: float = 0.5):
    """Every weight ~ N(0, std^2) (no init pass to trace: tiny random models are cheap)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, std, s.shape).astype(np.float32),
                        param_shapes(cfg))


def log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


@functools.partial(jax.jit, static_argnums=0)
def _logits(cfg, params, tokens_SxL):
    mask = tokens_SxL >= 0
    return Transformer(cfg).apply({"params": params}, tokens_SxL, positions_from_mask(mask),
                                  mask)[0]


def full_forward_logprobs(cfg, params, tokens_SxL):
    """log-softmax of a full forward (no cache) at every position: float64 [S, L, V]."""
    return log_softmax(_logits(cfg, params, np.asarray(tokens_SxL, np.int32)))


def chosen(lp_VxVxNxV):
    """[y1, y2, t, next] -> [y1, y2, t]: log pi(y_t | prompt, y_<t) of each continuation."""
    y1, y2 = np.meshgrid(np.arange(V), np.arange(V), indexing="ij")
    return np.stack([lp_VxVxNxV[y1, y2, 0, y1], lp_VxVxNxV[y1, y2, 1, y2]], -1)


@pytest.fixture(scope="module")
def tiny():
    """Params of the base and the two ARMs, and each model's next-token log-probs after every
    prefix of every continuation, from full forwards: float64 [V, V, NEW, V] (y1, y2, t, next)."""
    cfgs = (BASE,) + ARMS
    params = [random_params(c, 10 + i) for i, c in enumerate(cfgs)]
    y1, y2 = np.meshgrid(np.arange(V), np.arange(V), indexing="ij")
    seqs = np.concatenate([np.broadcast_to(PROMPT, (V * V, len(PROMPT))),
                           y1.reshape(-1, 1), y2.reshape(-1, 1)], axis=1)
    P = len(PROMPT)  # position P - 1 + t predicts y_t
    dists = [full_forward_logprobs(c, p, seqs)[:, P - 1:P + 1].reshape(V, V, NEW, V)
             for c, p in zip(cfgs, params)]
    return params, dists


def guided_logprobs(dists, convention: str, temperature: float):
    """log pi(y_t | .) [V, V, NEW] of each continuation under the guided distribution, in
    float64: (pi_base * prod_i pi_r_i^alpha_i)^(1/T) per token, or for the official
    convention (...)^(1 / (T (1 + sum alpha)))."""
    z = dists[0] + sum(a * d for a, d in zip(ALPHAS, dists[1:]))
    if convention == "official":
        z = z / (1 + sum(ALPHAS))
    return chosen(log_softmax(z / temperature))


def sequence_probs(lp_VxVxN) -> dict:
    """Completion (ending at STOP or after NEW tokens) -> its probability."""
    probs = {(STOP,): np.exp(lp_VxVxN[STOP, 0, 0])}
    for a in range(V):
        for b in range(V):
            if a != STOP:
                probs[(a, b)] = np.exp(lp_VxVxN[a, b].sum())
    assert abs(sum(probs.values()) - 1) < 1e-9
    return probs


def total_variation(counts: dict, probs: dict, draws: int) -> float:
    return 0.5 * sum(abs(counts.get(k, 0) / draws - p) for k, p in probs.items())


def tv_bound(probs: dict, draws: int, delta: float = 1e-6) -> float:
    """E[TV] of `draws` samples (exact: sum over outcomes of E|Bin(draws, p)/draws - p| / 2)
    plus McDiarmid's margin: one draw moves TV by at most 1/draws, so
    P(TV > E[TV] + eps) <= exp(-2 draws eps^2) = delta."""
    k = np.arange(draws + 1)
    mean = 0.5 * sum(float(np.sum(stats.binom.pmf(k, draws, p) * np.abs(k / draws - p)))
                     for p in probs.values())
    return mean + np.sqrt(np.log(1 / delta) / (2 * draws))


def guided_sampler(params, convention: str) -> Sampler:
    return Sampler(BASE, params[0], stop_ids=(STOP,), guide_convention=convention,
                   guides=[GuideModel(c, p, weight=a) for c, p, a in zip(ARMS, params[1:], ALPHAS)])


SAMPLE = dict(prompt_ids=[PROMPT], n=DRAWS, max_new_tokens=NEW, seed=3)


@pytest.mark.parametrize("convention", ["paper", "official"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_samples_follow_the_exact_product_distribution(tiny, convention, temperature):
    params, dists = tiny
    lps = [chosen(d) for d in dists]
    out = guided_sampler(params, convention)(temperature=temperature, **SAMPLE)
    assert out.guide_logprobs.shape == (1, DRAWS, len(ARMS), NEW)
    want_lp = guided_logprobs(dists, convention, temperature)
    L = out.lengths[0]
    y1, y2 = out.tokens[0, :, 0], np.where(L > 1, out.tokens[0, :, 1], 0)
    live = np.arange(NEW) < L[:, None]  # [DRAWS, NEW]
    # Every chosen token's log-prob: guided (sampling), base (model), each ARM (its reward).
    np.testing.assert_allclose(out.logprobs[0], np.where(live, want_lp[y1, y2], 0), atol=1e-5)
    np.testing.assert_allclose(out.model_logprobs[0], np.where(live, lps[0][y1, y2], 0),
                               atol=1e-5)
    for i in range(len(ARMS)):
        np.testing.assert_allclose(out.guide_logprobs[0, :, i],
                                   np.where(live, lps[1 + i][y1, y2], 0), atol=1e-5)
    # r_i(x, y) = sum_t log pi_r_i(y_t | .)
    np.testing.assert_array_equal(out.guide_rewards(), out.guide_logprobs.sum(-1))

    counts = {}
    for j in range(DRAWS):
        y = tuple(out.tokens[0, j, :L[j]].tolist())
        counts[y] = counts.get(y, 0) + 1
    probs = sequence_probs(want_lp)
    bound = tv_bound(probs, DRAWS)  # 0.08-0.10 here: E[TV] 0.02-0.04 + 0.059
    assert total_variation(counts, probs, DRAWS) < bound
    # The test can tell: the unguided base and the other convention are farther than the bound.
    other = "paper" if convention == "official" else "official"
    for wrong in (lps[0], guided_logprobs(dists, other, temperature)):
        assert total_variation(counts, sequence_probs(wrong), DRAWS) > bound


def test_alpha_zero_is_unguided_sampling_bit_for_bit_and_alphas_do_not_recompile(tiny):
    params, _ = tiny  # the programs of the test above (T = 1), reused when it ran before
    want = Sampler(BASE, params[0], stop_ids=(STOP,))(temperature=1.0, **SAMPLE)
    assert want.guide_logprobs.shape == (1, DRAWS, 0, NEW)
    for convention in ("paper", "official"):
        sampler = guided_sampler(params, convention)
        got = sampler(temperature=1.0, guide_weights=[0.0, 0.0], **SAMPLE)
        for name in ("tokens", "lengths", "logprobs", "model_logprobs", "stop_reason"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        live = np.arange(NEW) < got.lengths[..., None, None]
        assert (got.guide_logprobs < 0).all(where=live)
        assert (got.guide_logprobs == 0).all(where=~live)
        # The alphas are runtime values: no new program, other samples.
        traces = dict(loop.TRACES)
        moved = sampler(temperature=1.0, guide_weights=[3.0, 0.5], **SAMPLE)
        assert dict(loop.TRACES) == traces
        assert (moved.tokens != want.tokens).any(axis=-1).mean() > 0.3


# -- -inf vocabulary entries ---------------------------------------------------------------------

CONSTANT = ModelConfig(family="gpt2", vocab_size=8, hidden_size=16, num_layers=1, num_heads=2,
                       num_kv_heads=2, intermediate_size=32, max_position_embeddings=16)


def constant_lm(seed: int, logits_V):
    """A GPT-2 whose logits are `logits_V` (-inf entries included) after any prefix: the final
    LayerNorm's scale is 0 and its bias e_0, so the head reads its row 0."""
    p = random_params(CONSTANT, seed)
    p["final_norm"] = {"scale": np.zeros(16, np.float32), "bias": np.eye(16, dtype=np.float32)[0]}
    p["lm_head"]["kernel"][0] = logits_V
    return p


def test_minus_inf_logits_in_base_and_arm_never_give_nan():
    z_base = np.array([0.3, 0, 0.1, -0.2, 0, 0.2, -np.inf, -np.inf], np.float32)  # 6, 7 masked
    z_arm = np.array([1.0, -0.5, 0, 0.4, -1.0, -np.inf, -np.inf, 0.8], np.float32)  # 5, 6
    sampler = Sampler(CONSTANT, constant_lm(0, z_base), stop_ids=(),
                      guides=[GuideModel(CONSTANT, constant_lm(1, z_arm))])
    for alpha in (0.0, 1.5, -0.5):
        out = sampler(prompt_ids=[[1, 3], [4]], n=64, max_new_tokens=4, temperature=1.5,
                      guide_weights=[alpha])
        tokens = out.tokens
        assert not np.isnan(out.logprobs).any() and np.isfinite(out.model_logprobs).all()
        assert not np.isnan(out.guide_logprobs).any()
        assert not np.isin(tokens, [6, 7]).any()  # masked by the base
        # the exact per-token distribution: an id either model masks stays masked (alpha != 0)
        lp_arm = log_softmax(z_arm)
        z = z_base + (0 if alpha == 0 else np.where(np.isinf(lp_arm), -np.inf, alpha * lp_arm))
        np.testing.assert_allclose(out.logprobs, log_softmax(z / 1.5)[tokens], atol=1e-5)
        np.testing.assert_allclose(out.guide_logprobs[:, :, 0], lp_arm[tokens], atol=1e-5)
        if alpha == 0:  # the ARM's masked ids come up; their reward is log 0, not NaN
            assert np.isin(tokens, [5]).any()
        else:
            assert not np.isin(tokens, [5, 6]).any() and np.isfinite(out.logprobs).all()


# -- checks before tracing; vocabularies -------------------------------------------------------

BIG = BASE.replace(vocab_size=64)  # room for the test tokenizer's 39 tokens
BIG_ARMS = tuple(c.replace(vocab_size=64) for c in ARMS)


def big_guides(weights=(0.0, 0.0), **kw):
    return [GuideModel(c, random_params(c, 20 + i), weight=w, **kw)
            for i, (c, w) in enumerate(zip(BIG_ARMS, weights))]


def word_tokenizer(words):
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                     pad_token="<pad>", unk_token="<unk>")


def test_bad_guides_and_alphas_raise_before_tracing(tokenizer):
    params = random_params(BIG, 0)
    before = dict(loop.TRACES)
    small = BIG_ARMS[1].replace(vocab_size=48)
    with pytest.raises(ValueError, match=r"guide 1 has vocab_size 48 but the policy 64.*"
                                         r"crop_vocab=True"):
        Sampler(BIG, params, guides=big_guides()[:1] + [GuideModel(small, params)])
    with pytest.raises(ValueError, match="guide_convention"):
        Sampler(BIG, params, guides=big_guides(), guide_convention="mean")
    sampler = Sampler(BIG, params, guides=big_guides())
    for weights in ([1.0], [1.0, 2.0, 3.0], 1.0, [[1.0, 2.0]], ["a", "b"]):
        with pytest.raises(ValueError, match="expected 2"):
            sampler(prompt_ids=[[5, 6]], guide_weights=weights)
    with pytest.raises(ValueError, match="finite"):
        sampler(prompt_ids=[[5, 6]], guide_weights=[1.0, np.inf])
    with pytest.raises(ValueError, match="finite"):
        Sampler(BIG, params, guides=big_guides((np.nan, 0.0)))
    official = Sampler(BIG, params, guides=big_guides(), guide_convention="official")
    with pytest.raises(ValueError, match="1 \\+ sum"):
        official(prompt_ids=[[5, 6]], guide_weights=[-1.0, 0.0])
    # Tokenizers: the same tokens on every shared id (one more added token is fine), else the
    # first id that differs is named.
    longer = word_tokenizer(WORDS + ["extra"])
    Sampler(BIG, params, tokenizer, guides=big_guides(tokenizer=longer))
    swapped = word_tokenizer(WORDS[:3] + [WORDS[4], WORDS[3]] + WORDS[5:])
    with pytest.raises(ValueError, match=f"guide 0's tokenizer maps id {len(SPECIALS) + 3} to "
                                         f"'{WORDS[4]}', the policy's to '{WORDS[3]}'"):
        Sampler(BIG, params, tokenizer, guides=big_guides(tokenizer=swapped))
    assert dict(loop.TRACES) == before


def test_crop_vocab_samples_from_the_shared_prefix_only(tokenizer):
    arm48 = BIG_ARMS[1].replace(vocab_size=48)  # tokenizer: 39 < 48 < 64
    assert Sampler(BIG, random_params(BIG, 0), tokenizer, crop_vocab=True,
                   guides=[GuideModel(arm48, random_params(arm48, 1))]).vocab_size == 39
    cfg, arm_cfg = BASE.replace(vocab_size=16), ARMS[1].replace(vocab_size=12)
    params, arm = random_params(cfg, 2), random_params(arm_cfg, 3)
    sampler = Sampler(cfg, params, stop_ids=(), crop_vocab=True,
                      guides=[GuideModel(arm_cfg, arm, weight=0.8)])
    assert sampler.vocab_size == 12
    ps = [[1, 5, 7], [3, 8, 2], [11, 2, 9]]  # one length: one full-forward program below
    out = sampler(prompt_ids=ps, n=8, temperature=3.0, max_new_tokens=6)
    assert out.tokens.max() == 11  # the shared prefix, up to its end
    # Per token, against full forwards: the ARM normalised over its 12 ids, the policy over
    # its own 16 (model_logprobs), the sampled distribution over the shared 12.
    for p, prompt in enumerate(ps):
        seqs = np.concatenate([np.broadcast_to(prompt, (8, len(prompt))), out.tokens[p]], 1)
        at = np.arange(len(prompt) - 1, seqs.shape[1] - 1)  # positions predicting the tokens
        lp_base = full_forward_logprobs(cfg, params, seqs)[:, at]
        lp_arm = full_forward_logprobs(arm_cfg, arm, seqs)[:, at]
        lp = log_softmax((lp_base[..., :12] + 0.8 * lp_arm) / 3.0)
        take = lambda x: np.take_along_axis(x, out.tokens[p][..., None], -1)[..., 0]  # noqa
        np.testing.assert_allclose(out.model_logprobs[p], take(lp_base), atol=1e-5)
        np.testing.assert_allclose(out.guide_logprobs[p, :, 0], take(lp_arm), atol=1e-5)
        np.testing.assert_allclose(out.logprobs[p], take(lp), atol=1e-5)
