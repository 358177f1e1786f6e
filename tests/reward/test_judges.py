"""Judges: the mixture's any-fails rule, shape errors naming the judge, regex and LLM judges."""

import numpy as np
import pytest

from jaxalign.reward import (Judge, JudgeError, LLMJudge, MixtureOfJudges, RegexAnswerJudge,
                             Verdicts)
from jaxalign.sharding import make_mesh
from tests.reward.tiny_lm import CFG, PARAMS, TOKENIZER, next_token_logprobs_direct


class TableJudge(Judge):
    """Returns a fixed answer (verdicts, or whatever it is given) whatever the batch."""

    def __init__(self, name, out):
        self.name, self.out = name, out

    def judge(self, prompts, completions, metadata):
        return self.out


def test_mixture_fails_exactly_when_one_judge_fails():
    rng = np.random.default_rng(0)
    table = rng.random((64, 3)) < 0.7
    scores = rng.random(64).astype(np.float32)
    judges = [TableJudge("a", table[:, 0]), TableJudge("b", Verdicts(table[:, 1], scores)),
              TableJudge("c", table[:, 2].astype(np.int32))]
    out = MixtureOfJudges(judges)(["p"] * 64, ["r"] * 64)
    assert out.names == ("a", "b", "c")
    assert out.verdicts.shape == (64, 3) and out.verdicts.dtype == bool
    np.testing.assert_array_equal(out.verdicts, table)
    for n in range(64):
        assert out.passed[n] == (not any(not v for v in table[n]))
    assert 0 < out.passed.sum() < 64
    assert list(out.scores) == ["b"]
    np.testing.assert_array_equal(out.scores["b"], scores)


@pytest.mark.parametrize("out, what", [
    (np.ones(5, bool), r"verdicts of shape \(5,\) for 4 responses; expected \(4,\)"),
    (np.ones((4, 1), bool), r"verdicts of shape \(4, 1\)"),
    (np.array([0, 1, 2, 1]), r"verdicts of dtype int64 that are not 0/1"),
    (Verdicts(np.ones(4, bool), np.zeros(3)), r"scores of shape \(3,\) for 4 responses"),
])
def test_wrong_shape_names_the_judge(out, what):
    ok = TableJudge("fine", np.ones(4, bool))
    with pytest.raises(JudgeError, match=r"judge 'broken_rule' returned " + what):
        MixtureOfJudges([ok, TableJudge("broken_rule", out)])(["p"] * 4, ["r"] * 4)


def test_mixture_needs_distinct_names():
    with pytest.raises(ValueError, match="distinct names"):
        MixtureOfJudges([TableJudge("x", None), TableJudge("x", None)])


def test_regex_final_answer_judge():
    judge = RegexAnswerJudge()
    cases = [("so the answer is 42.", 42, True), ("The answer is 41", "42", False),
             ("42", 42, False),  # no "answer is": a badly formatted answer is a violation
             ("the answer is 1,000", "1000", True), ("Answer is: $3.0$", 3, True),
             ("answer is 7, no wait, the answer is 8", 8, True),
             ("answer is 7, no wait, the answer is 8", 7, False),
             ("the answer is -0.5", "-.5", True)]
    out = judge([""] * len(cases), [c[0] for c in cases], [{"answer": c[1]} for c in cases])
    np.testing.assert_array_equal(out.passed, [c[2] for c in cases])
    assert out.scores is None
    boxed = RegexAnswerJudge(r"\\boxed\{([^}]*)\}", name="boxed")
    assert boxed(["q"], [r"so \boxed{x+1}"], [{"answer": "X+1"}]).passed.tolist() == [True]
    with pytest.raises(KeyError, match="judge 'final_answer': response 1 has no metadata"):
        judge(["", ""], ["answer is 1", "answer is 2"], [{"answer": 1}, {}])


TEMPLATE = "{prompt} then {response} is it good or bad the answer"


def test_llm_judge_compares_positive_and_negative_token_probabilities():
    prompts = ["tell me about your morning"] * 3 + ["describe the city"] * 3
    responses = ["a good day", "the dark cold river", "we saw it", "kind and warm",
                 "awful and sad", "the sky is very bright and then the day was fine"]
    judge = LLMJudge(CFG, PARAMS, TOKENIZER, template=TEMPLATE, positive="fine",
                     negative="poor", max_length=64, min_bucket=16, batch_size=4)
    out = judge(prompts, responses)
    pos, neg = judge.probe.token_ids
    lp = np.array([next_token_logprobs_direct(TEMPLATE.format(prompt=p, response=r), (pos, neg))
                   for p, r in zip(prompts, responses)])
    np.testing.assert_allclose(out.scores, 1 / (1 + np.exp(lp[:, 1] - lp[:, 0])), atol=1e-5)
    np.testing.assert_array_equal(out.passed, lp[:, 0] > lp[:, 1])
    assert 0 < out.passed.sum() < 6, "all the same: pick another seed for the tiny judge"
    # Batched under jit: buckets 16 and 32 at most, nothing new on a second, smaller call.
    compiled = judge.probe.forward.fn._cache_size()
    assert compiled <= 2
    judge(prompts[:2], responses[:2])
    assert judge.probe.forward.fn._cache_size() == compiled
    strict = LLMJudge(CFG, PARAMS, TOKENIZER, template=TEMPLATE, positive="fine",
                      negative="poor", threshold=0.6, max_length=64, min_bucket=16, batch_size=8,
                      mesh=make_mesh(data=8), name="strict")
    got = strict(prompts, responses)
    np.testing.assert_allclose(got.scores, out.scores, atol=1e-5)
    np.testing.assert_array_equal(got.passed, out.scores > 0.6)
    assert got.passed.sum() < out.passed.sum()
    # In a mixture with a rule judge, the metadata reaches both.
    moj = MixtureOfJudges([judge, RegexAnswerJudge(r"(\w+)$", answer_key="last")])
    res = moj(prompts, responses, [{"last": r.split()[-1]} for r in responses])
    np.testing.assert_array_equal(res.verdicts[:, 0], out.passed)
    np.testing.assert_array_equal(res.passed, out.passed)


def test_llm_judge_template_sees_metadata_and_tokens_are_checked():
    judge = LLMJudge(CFG, PARAMS, TOKENIZER, template="{prompt} {response} {truth} good",
                     positive="good", negative="bad", max_length=32, min_bucket=32)
    assert judge.render("p", "r", {"truth": "t"}) == "p r t good"
    with pytest.raises(ValueError, match=r"designated token 'zebra' encodes to \[3\]"):
        LLMJudge(CFG, PARAMS, TOKENIZER, template="{response}", positive="zebra",
                 negative="bad")
    with pytest.raises(ValueError, match="threshold must be in"):
        LLMJudge(CFG, PARAMS, TOKENIZER, template="{response}", threshold=1.0)
