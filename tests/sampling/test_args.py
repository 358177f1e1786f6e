"""ARGS decoding: each step's choice == argmax over the policy's top-k of z + w * r, with r the
scalar reward model's score of the whole sequence; w = 0 or k = 1 give the policy's own
decoding; a favoured token is picked whenever it is a candidate; errors before tracing."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import Transformer, positions_from_mask
from jaxalign.reward.args import ArgsSampler
from jaxalign.reward.model import init_reward_params, reward_scores
from jaxalign.sampling import Sampler, loop

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [20]]
N = 8
_scores = jax.jit(reward_scores, static_argnums=0)


@pytest.fixture(scope="module")
def rm(llama):
    """A random scalar reward model of the policy's shape (its own backbone)."""
    cfg, _ = llama
    return jax.jit(init_reward_params, static_argnums=0)(cfg, jax.random.key(5))


@pytest.fixture(scope="module")
def searcher(llama, rm):
    cfg, params = llama
    return ArgsSampler(cfg, params, cfg, rm, stop_ids=())


@pytest.fixture(scope="module")
def greedy(llama):
    cfg, params = llama
    return Sampler(cfg, params, stop_ids=())(prompt_ids=PROMPTS, temperature=0.0,
                                             max_new_tokens=N)


def favouring(rm, token: int):
    """A reward model whose reward is a function of the last token only, highest for `token`:
    attention and MLP outputs zeroed, so the final hidden state is the norm of its embedding."""
    layers = dict(rm["model"]["layers"])
    zero = lambda kernel: {"kernel": jnp.zeros_like(kernel["kernel"])}
    layers["attn"] = {**layers["attn"], "o": zero(layers["attn"]["o"])}
    layers["mlp"] = {**layers["mlp"], "down": zero(layers["mlp"]["down"])}
    e = rm["model"]["embed"]["embedding"][token]
    return {"model": {**rm["model"], "layers": layers}, "score": {"kernel": e[:, None]}}


@functools.partial(jax.jit, static_argnums=0)
def _last_logits(cfg, params, tokens, mask):
    logits, _, _ = Transformer(cfg).apply({"params": params}, tokens, positions_from_mask(mask),
                                          mask)
    return jnp.take_along_axis(logits, (mask.sum(-1) - 1)[:, None, None], axis=1)[:, 0]


def _right_padded(seqs, width):
    tokens, mask = np.zeros((len(seqs), width), np.int32), np.zeros((len(seqs), width), bool)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)], mask[i, :len(s)] = s, True
    return tokens, mask


def by_hand(cfg, params, rm_params, out, k, w):
    """Per row and step, from full forwards without cache: the policy's logits z, its top-k,
    r([x, y_<t, v]) = reward_scores of each candidate sequence, the scores z + w * r."""
    width = max(map(len, PROMPTS)) + N
    steps = []
    for t in range(N):
        prefixes = [PROMPTS[p] + out.tokens[p, 0, :t].tolist() for p in range(len(PROMPTS))]
        z = np.asarray(_last_logits(cfg, params, *_right_padded(prefixes, width)))
        cand = np.argsort(-z, axis=-1)[:, :k]
        seqs = [x + [int(v)] for x, row in zip(prefixes, cand) for v in row]
        r = np.asarray(_scores(cfg, rm_params, *_right_padded(seqs, width))).reshape(cand.shape)
        steps.append((z, cand, np.take_along_axis(z, cand, -1) + w * r))
    return steps


def test_each_choice_is_the_best_candidate_by_reward_model_scores(llama, rm, searcher):
    cfg, params = llama
    k, w = 5, 2.0
    out = searcher(prompt_ids=PROMPTS, k=k, w=w, temperature=0.0, max_new_tokens=N)
    assert (out.lengths == N).all() and (out.logprobs == 0).all()  # greedy: a point mass
    changed = 0
    for t, (z, cand, score) in enumerate(by_hand(cfg, params, rm, out, k, w)):
        for p in range(len(PROMPTS)):
            y = out.tokens[p, 0, t]
            assert y in cand[p]
            # argmax up to float32 rounding of two computations (cache vs full forward)
            assert score[p][cand[p] == y][0] >= score[p].max() - 1e-4
            changed += y != cand[p, 0]
            lp = z[p] - np.log(np.exp(z[p] - z[p].max()).sum()) - z[p].max()
            np.testing.assert_allclose(out.model_logprobs[p, 0, t], lp[y], atol=1e-4)
    assert changed > 0  # the reward model did move the decoding off the policy's argmax


def test_w_zero_and_k_one_are_greedy_decoding(llama, rm, searcher, greedy):
    cfg, params = llama
    out = searcher(prompt_ids=PROMPTS, k=5, w=0.0, temperature=0.0, max_new_tokens=N)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    np.testing.assert_allclose(out.model_logprobs, greedy.model_logprobs, atol=1e-5)
    # k = 1: the only candidate is the policy's argmax, whatever the reward model favours.
    one = ArgsSampler(cfg, params, cfg, favouring(rm, 30), stop_ids=())
    out = one(prompt_ids=PROMPTS, k=1, w=100.0, temperature=0.0, max_new_tokens=N)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    np.testing.assert_allclose(out.model_logprobs, greedy.model_logprobs, atol=1e-5)


def test_a_favoured_token_is_picked_whenever_it_is_a_candidate(llama, rm):
    cfg, params = llama
    k, w = 5, 100.0
    z0 = np.asarray(_last_logits(cfg, params, *_right_padded(PROMPTS[:1], 4)))[0]
    favoured = int(np.argsort(-z0)[2])  # prompt 0's third most likely first token
    good = favouring(rm, favoured)
    r = np.asarray(_scores(cfg, good, np.arange(64)[:, None], np.ones((64, 1), bool)))
    assert r.argmax() == favoured  # the reward depends on the last token only
    out = ArgsSampler(cfg, params, cfg, good, stop_ids=())(
        prompt_ids=PROMPTS, k=k, w=w, temperature=0.0, max_new_tokens=N)
    moved = 0
    for t, (_, cand, _) in enumerate(by_hand(cfg, params, good, out, k, w)):
        for p in range(len(PROMPTS)):
            y = out.tokens[p, 0, t]
            assert (y == favoured) == (favoured in cand[p])
            moved += (y == favoured) and cand[p, 0] != favoured
    assert out.tokens[0, 0, 0] == favoured and moved >= 1


def test_sampled_with_w_zero_is_the_samplers_top_k(llama, rm, searcher):
    """Same keys (seed, prompt id, sample index) as the Sampler: ARGS-stochastic with w = 0
    draws exactly what the Sampler draws with top_k = k, log-probs included."""
    cfg, params = llama
    kw = dict(prompt_ids=PROMPTS * 2, ids=list(range(100, 108)), n=2, temperature=0.9,
              max_new_tokens=N, seed=3)
    base = Sampler(cfg, params, stop_ids=())(top_k=5, **kw)
    out = searcher(k=5, w=0.0, **kw)
    np.testing.assert_array_equal(out.tokens, base.tokens)
    np.testing.assert_allclose(out.logprobs, base.logprobs, atol=1e-5)
    np.testing.assert_allclose(out.model_logprobs, base.model_logprobs, atol=1e-5)
    guided = searcher(k=5, w=3.0, **kw)  # a runtime weight: the same compiled program
    assert (guided.logprobs < 0).all() and not np.array_equal(guided.tokens, out.tokens)


@pytest.mark.parametrize("call", [
    dict(k=0), dict(k=65), dict(k=2.0), dict(w=float("nan")), dict(w=float("inf")),
    dict(w="1"), dict(w=True), dict(n=0), dict(max_new_tokens=0), dict(temperature=-1.0),
    dict(stop_ids=[64]),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_bad_arguments_raise_before_tracing(searcher, call):
    before = dict(loop.TRACES)
    with pytest.raises(ValueError):
        searcher(prompt_ids=PROMPTS, **call)
    assert dict(loop.TRACES) == before


def test_bad_reward_model_raises_at_construction(llama, rm, tokenizer):
    cfg, params = llama
    small = cfg.replace(vocab_size=32)
    with pytest.raises(ValueError, match="reward model vocabulary 32"):
        ArgsSampler(cfg, params, small, rm)
    with pytest.raises(ValueError, match="kernel"):
        ArgsSampler(cfg, params, cfg.replace(hidden_size=16), rm)
    with pytest.raises(ValueError, match="no guides"):
        ArgsSampler(cfg, params, cfg, rm, guides=[])
    # A 48-row reward model covers the 39-token tokenizer, not a prompt id of 50.
    mid = cfg.replace(vocab_size=48)
    rm48 = {**rm, "model": {**rm["model"], "embed": {
        "embedding": rm["model"]["embed"]["embedding"][:48]}}}
    s = ArgsSampler(cfg, params, mid, rm48, tokenizer, stop_ids=())
    before = dict(loop.TRACES)
    with pytest.raises(ValueError, match="reward model's vocabulary"):
        s(prompt_ids=[[5, 50]], k=3)
    assert dict(loop.TRACES) == before


@pytest.mark.parametrize("make,call,match", [
    ("plain", dict(k=3), "no reward model"),
    ("plain", dict(w=1.0), "no reward model"),
    ("args", dict(w=1.0, guide_weights=[1.0]), "w .* or guide_weights, not both"),
    ("args", dict(guide_weights=[1.0, 2.0]), "expected 1 values"),
    ("both", {}, "guides .* or reward .*, not both"),
], ids=["plain-k", "plain-w", "args-w-and-guide_weights", "args-two-weights", "guides-and-reward"])
def test_one_sampler_refuses_mixed_strategy_arguments(llama, rm, searcher, make, call, match):
    """ARGS's k and w need a reward model; its runtime control is one weight; GenARM's guides
    and ARGS's reward model do not mix. All before tracing."""
    from jaxalign.reward import ScalarRewardStep
    from jaxalign.sampling import GuideModel, RewardGuide
    cfg, params = llama
    before = dict(loop.TRACES)
    with pytest.raises(ValueError, match=match):
        if make == "both":
            Sampler(cfg, params, guides=[GuideModel(cfg, params)],
                    reward=RewardGuide(ScalarRewardStep(cfg), rm))
        sampler = Sampler(cfg, params, stop_ids=()) if make == "plain" else searcher
        sampler(prompt_ids=PROMPTS, **call)
    assert dict(loop.TRACES) == before
