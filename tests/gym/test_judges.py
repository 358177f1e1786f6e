import numpy as np
import pytest

from jaxalign.gym import judges as J


def test_no_repeat():
    out = J.NoRepeatJudge(k=3)(["p"] * 3, ["cat cat dog", "cat cat cat", "a b a b"])
    assert out.passed.tolist() == [True, False, True]
    assert J.NoRepeatJudge(k=2)(["p"], ["cat cat"]).passed.tolist() == [False]


def test_length():
    out = J.LengthJudge(1, 3)(["p"] * 4, ["", "a", "a b c", "a b c d"])
    assert out.passed.tolist() == [False, True, True, False]


def test_ends_with_eos():
    j = J.EndsWithEOSJudge()
    meta = [{"stop_reason": "stop"}, {"stop_reason": "length"}]
    assert j(["p", "p"], ["a", "a"], meta).passed.tolist() == [True, False]
    assert j(["p", "p"], ["a b </s>", "a b"]).passed.tolist() == [True, False]


def test_answer_format_and_answer():
    prompts = ["add 3 4 =", "add 3 4 =", "add 3 4 =", "#news cat day :"]
    comps = ["7", "7 cat", "5", "good day"]
    assert J.AnswerFormatJudge()(prompts, comps).passed.tolist() == [True, False, True, True]
    assert J.ArithmeticAnswerJudge()(prompts, comps).passed.tolist() == [True, True, False, True]


def test_mixture_fails_if_any_fails():
    moj = J.constraint_judges(max_repeat=3, max_tokens=4)
    out = moj(["add 1 1 =", "#news cat day :", "#news cat day :"],
              ["2", "cat cat cat", "a b c d e"],
              [{"stop_reason": "stop"}, {"stop_reason": "stop"}, {"stop_reason": "length"}])
    assert out.passed.tolist() == [True, False, False]
    assert out.names == ("no_repeat", "length", "ends_with_eos", "answer_format")
    np.testing.assert_array_equal(out.verdicts[2], [True, False, False, True])


def test_repeat_k_must_be_at_least_two():
    with pytest.raises(ValueError):
        J.NoRepeatJudge(k=1)
