"""Issue #14, class 5: sampler output is always in the vocabulary and finite, or an error.

Settings that cannot work are refused before anything is traced; logits that turn non-finite
while decoding (an overflowing weight, an extreme temperature or guide weight, a broken reward
model) stop the call with an error naming the prompt (index and text) and the step, for the
plain Sampler, GenARM guided decoding and ARGS alike.
"""

import jax
import numpy as np
import pytest

from jaxalign.models import ModelConfig, init_params
from jaxalign.reward.args import ArgsSampler
from jaxalign.reward.model import init_reward_params
from jaxalign.sampling import GuideModel, Sampler, loop
from tests.sampling.helpers import make_tokenizer

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                  num_kv_heads=1, intermediate_size=32, max_position_embeddings=16)
GPT2 = ModelConfig(family="gpt2", vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                   num_kv_heads=2, intermediate_size=32, max_position_embeddings=8)
PROMPTS = ["the cat sat", "hello world how are you"]
KW = dict(max_new_tokens=15, n=2)  # max_len 16: the longest completion a prompt can have


@pytest.fixture(scope="module")
def m():
    """Tiny models: a policy, a GPT-2 with an 8-row position table, a reward model."""
    tok = make_tokenizer()
    params = init_params(CFG, jax.random.key(0))
    nan = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(np.nan), params)
    head = params["lm_head"]["kernel"]
    loud = {**params, "lm_head": {"kernel": np.sign(head) * 3e38}}  # finite; its logits are not
    rm = init_reward_params(CFG, jax.random.key(1))
    broken_rm = {**rm, "score": {"kernel": rm["score"]["kernel"] * np.nan}}
    sampler = Sampler(CFG, params, tok, max_len=16, stop_ids=())
    guided = Sampler(CFG, params, tok, max_len=16, stop_ids=(), guides=[GuideModel(CFG, params)])
    return dict(tok=tok, params=params, nan=nan, loud=loud, rm=rm, broken_rm=broken_rm,
                sampler=sampler, guided=guided,
                args=ArgsSampler(CFG, params, CFG, rm, tok, max_len=16, stop_ids=()))


# (id, the call, the error it must raise, raised before tracing)
CASES = [
    ("temperature-inf", lambda m: m["sampler"](PROMPTS, temperature=float("inf"), **KW),
     r"temperature must be a finite number >= 0.*inf", True),
    ("temperature-nan", lambda m: m["sampler"](PROMPTS, temperature=float("nan"), **KW),
     r"temperature must be a finite number >= 0.*nan", True),
    ("temperature-negative", lambda m: m["sampler"](PROMPTS, temperature=-0.5, **KW),
     r"temperature must be a finite number >= 0.*-0\.5", True),
    ("top_p-0", lambda m: m["sampler"](PROMPTS, top_p=0.0, **KW), r"top_p .*\(0, 1\]", True),
    ("top_p-1.5", lambda m: m["sampler"](PROMPTS, top_p=1.5, **KW), r"top_p .*\(0, 1\]", True),
    ("top_p-nan", lambda m: m["sampler"](PROMPTS, top_p=float("nan"), **KW), r"top_p .*nan",
     True),
    ("top_k-negative", lambda m: m["sampler"](PROMPTS, top_k=-1, **KW), r"top_k .*>= 0.*-1",
     True),
    ("top_k-float", lambda m: m["sampler"](PROMPTS, top_k=2.5, **KW), r"top_k .*int.*2\.5", True),
    ("min_p-nan", lambda m: m["sampler"](PROMPTS, min_p=float("nan"), **KW), r"min_p .*nan",
     True),
    ("seed-negative", lambda m: m["sampler"](PROMPTS, seed=-1, **KW), r"seed .*\[0, 2\*\*32\)",
     True),
    ("alpha-inf", lambda m: m["guided"](PROMPTS, guide_weights=[float("inf")], **KW),
     r"guide_weights must be finite", True),
    ("alpha-nan", lambda m: m["guided"](PROMPTS, guide_weights=[float("nan")], **KW),
     r"guide_weights must be finite", True),
    ("policy-weights-nan", lambda m: Sampler(CFG, m["nan"], m["tok"], max_len=16),
     r"the policy: weights .*'embed'.* hold NaN", True),
    ("guide-weights-nan", lambda m: Sampler(CFG, m["params"], m["tok"], max_len=16,
                                            guides=[GuideModel(CFG, m["nan"])]),
     r"guide 0: weights .* hold NaN", True),
    ("max_len-past-position-table", lambda m: Sampler(CFG, m["params"], m["tok"], max_len=32),
     r"max_len=32 is longer than the policy's position table "
     r"\(ModelConfig.max_position_embeddings=16\)", True),
    ("gpt2-positions-past-table", lambda m: Sampler(GPT2, init_params(GPT2, jax.random.key(2)),
                                                    m["tok"], max_len=16),
     r"max_len=16 is longer than the policy's position table "
     r"\(ModelConfig.max_position_embeddings=8\)", True),
    ("guide-table-shorter", lambda m: Sampler(CFG, m["params"], m["tok"], max_len=16,
                                              guides=[GuideModel(GPT2, init_params(
                                                  GPT2, jax.random.key(2)))]),
     r"max_len=16 is longer than guide 0's position table", True),
    ("prompt-longer-than-max_len", lambda m: m["sampler"](prompt_ids=[[5] * 16], **KW),
     r"prompt 0 has 16 tokens: it does not fit the cache of max_len=16", True),
    ("same-key-id", lambda m: m["sampler"](PROMPTS, ids=[7, "7"], **KW),
     r"prompts 0 and 1 have the same key id 7", True),
    ("same-key-id-guided", lambda m: m["guided"](PROMPTS + ["a dog"], ids=[3, 4, 3], **KW),
     r"prompts 0 and 2 have the same key id 3", True),
    ("args-same-key-id", lambda m: m["args"](prompt_ids=[[5, 6], [7]], ids=["x", "x"], k=4,
                                             **KW),
     r"prompts 0 and 1 have the same key id", True),
    ("args-temperature-inf", lambda m: m["args"](PROMPTS, temperature=float("inf"), k=4, **KW),
     r"temperature must be a finite number", True),
    ("args-max_len-past-table", lambda m: ArgsSampler(CFG, m["params"], CFG, m["rm"], m["tok"],
                                                      max_len=32),
     r"max_len=32 is longer than the policy's position table", True),
    # non-finite while decoding: the compiled loop flags the row, the host names it
    ("logits-overflow", lambda m: Sampler(CFG, m["loud"], m["tok"], max_len=16, stop_ids=())(
        PROMPTS, **KW), r"prompt 0 \('the cat sat'\), sample 0: the logits or log-probs at "
                        r"step 0 \(new token 1\) are not finite", False),
    ("alpha-overflow", lambda m: m["guided"](PROMPTS, guide_weights=[1e38], **KW),
     r"prompt 0 \('the cat sat'\), sample 0: .* step 0 .*not finite", False),
    ("args-reward-nan", lambda m: ArgsSampler(CFG, m["params"], CFG, m["broken_rm"], m["tok"],
                                              max_len=16, stop_ids=())(PROMPTS, k=4, **KW),
     r"prompt 0 \('the cat sat'\), sample 0: .* step 0 .*not finite", False),
]


@pytest.mark.parametrize("call,match,before_tracing", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_sampler_output_is_valid_or_an_error(m, call, match, before_tracing):
    traces = sum(loop.TRACES.values())
    with pytest.raises(ValueError, match=match):
        call(m)
    if before_tracing:
        assert sum(loop.TRACES.values()) == traces


def test_max_new_tokens_past_max_len_allocates_only_what_fits(m):
    """The decode buffers hold max_len - 1 tokens whatever max_new_tokens says, and the
    completions are those of max_new_tokens = max_len - 1 (the same compiled program)."""
    want = m["sampler"](PROMPTS, **KW)
    traces = dict(loop.TRACES)
    got = m["sampler"](PROMPTS, **{**KW, "max_new_tokens": 10**9})
    assert loop.TRACES == traces  # no program of 10**9 slots
    assert got.tokens.shape == want.tokens.shape == (2, 2, 15)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    assert (got.lengths <= 16 - np.array([[4], [6]])).all()  # max_len - prompt length (BOS)
    assert got.tokens.max() < m["sampler"].vocab_size
    assert np.isfinite(got.logprobs).all() and np.isfinite(got.model_logprobs).all()
