"""The math judge: equivalent forms pass, wrong answers and wrong formats fail, the last phrase
counts, errors name the response, it mixes with the regex judge, and a hung comparison is cut
off at its deadline from a non-main thread."""

import threading

import numpy as np
import pytest

from jaxalign.reward import MixtureOfJudges, RegexAnswerJudge
from jaxalign.reward.math_judge import MathAnswerJudge


@pytest.fixture(scope="module")
def judge():
    j = MathAnswerJudge()  # one worker process for the whole module
    yield j
    j.close()


def verdicts(judge, gold, completions):
    return judge([""] * len(completions), completions,
                 [{"answer": gold}] * len(completions)).passed.tolist()


@pytest.mark.parametrize("gold, completion", [
    ("1/2", r"The final answer is $\frac{1}{2}$. I hope it is correct."),
    ("1/2", "The final answer is 0.5."),
    (0.5, r"The final answer is \dfrac12"),
    (r"2\sqrt{2}", r"The final answer is $\sqrt{8}$."),
    ("x^2+2x+1", "The final answer is $(x+1)^2$"),
    (r"\{1, 2\}", r"The final answer is $\{2, 1\}$"),
    ("[0, 1)", "The final answer is $[0,1)$."),
    (3, r"so the final answer is: \boxed{3}"),
    (r"\frac{\pi}{2}", r"The final answer is \(\pi/2\)"),
    (1000, "The final answer is 1,000."),
    ("12", "The final answer is:\n$$\n12\n$$"),
    ("3.5", "The final answer is 7/2"),
], ids=["frac", "decimal", "dfrac_float_gold", "surd", "polynomial", "set", "interval",
        "boxed_lowercase", "pi_paren_delims", "thousands", "display_math", "rational"])
def test_equivalent_forms_pass(judge, gold, completion):
    assert verdicts(judge, gold, [completion]) == [True]


@pytest.mark.parametrize("gold, completion", [
    ("1/2", "The final answer is 0.3"),
    ("x^2+2x+1", "The final answer is $(x+2)^2$"),
    ("(0, 1]", "The final answer is $[0, 1)$"),
    (r"2\sqrt{2}", "The final answer is 2"),
    ("2", r"The final answer is 2\sqrt{2}"),  # not read as the number 2
    ("3", "The final answer is 3, not 4"),  # not one expression
    ("x", "The final answer is y"),
], ids=["decimal", "polynomial", "interval_ends", "missing_surd", "extra_surd", "hedged",
        "variable"])
def test_wrong_answers_fail(judge, gold, completion):
    assert verdicts(judge, gold, [completion]) == [False]


@pytest.mark.parametrize("completion", [
    r"\boxed{\frac{1}{2}}", "The answer is 1/2.", "1/2", "The final answer is",
    "The final answer is coming. 1/2",
], ids=["boxed_only", "other_phrase", "bare", "nothing_after", "answer_later"])
def test_correct_answer_without_the_format_fails(judge, completion):
    assert verdicts(judge, "1/2", [completion]) == [False]


def test_last_occurrence_counts_and_phrase_is_a_parameter(judge):
    text = "The final answer is 3. Wait, I slipped. The final answer is $4$."
    assert verdicts(judge, 4, [text]) == [True]
    assert verdicts(judge, 3, [text]) == [False]
    ours = MathAnswerJudge(phrase="ANSWER:", name="math_answer_colon")
    try:
        assert verdicts(ours, 4, ["ANSWER: 3 ... answer: 4", "The final answer is 4"]) == [
            True, False]
    finally:
        ours.close()


def test_bad_metadata_names_the_response(judge):
    with pytest.raises(KeyError, match="judge 'math': response 1 has no metadata 'answer'"):
        judge(["", ""], ["The final answer is 1", "The final answer is 2"], [{"answer": 1}, {}])
    with pytest.raises(ValueError, match="response 0: metadata 'answer' = '' is not an answer"):
        judge([""], ["The final answer is 3"], [{"answer": ""}])


def test_in_a_mixture_with_the_regex_judge(judge):
    completions = ["The final answer is $\\frac{6}{4}$. Units: cm", "The final answer is 1.5",
                   "The final answer is 2. Units: cm", "1.5"]
    meta = [{"answer": "3/2", "unit": "cm"}] * 4
    moj = MixtureOfJudges([judge, RegexAnswerJudge(r"units: (\w+)", answer_key="unit",
                                                   name="unit")])
    out = moj([""] * 4, completions, meta)
    assert out.names == ("math", "unit")
    np.testing.assert_array_equal(out.verdicts, [[True, True], [True, False], [False, True],
                                                 [False, False]])
    np.testing.assert_array_equal(out.passed, [True, False, False, False])
    assert out.scores == {}


def test_hung_comparison_fails_at_its_deadline_from_a_thread():
    # math-verify's signal alarm would raise off the main thread; the worker deadline does not.
    slow = MathAnswerJudge(timeout_s=0.5, name="math_fast")
    got = {}

    def run():
        got["out"] = slow(["", ""], [r"The final answer is $9^{9^{9^{9}}}$",
                                     "The final answer is 3"], [{"answer": "3"}] * 2)

    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=60)
        assert got["out"].passed.tolist() == [False, True]  # the next one: a fresh worker
        assert slow.timeouts == 1
    finally:
        slow.close()


def test_worker_address_space_is_capped(judge):
    """The math-verify worker runs under RLIMIT_AS = memory_mb (default 4096 MiB); a negative
    cap is refused."""
    judge(["p"], ["The final answer is $1$."], [{"answer": "1"}])  # the worker is running
    limits = open(f"/proc/{judge._worker.proc.pid}/limits").read()
    line = next(x for x in limits.splitlines() if x.startswith("Max address space"))
    assert line.split()[3:5] == [str(4096 << 20)] * 2, line
    with pytest.raises(ValueError, match="memory_mb must be >= 0"):
        MathAnswerJudge(memory_mb=-1)
