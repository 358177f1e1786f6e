"""CGPO's three LLM judges on a tiny random Llama: names and token pairs, the ground truth in
the factuality prompt, verdicts = p(pos) > p(neg) from the model's logits, missing metadata."""

import numpy as np
import pytest

from jaxalign.reward import MixtureOfJudges
from jaxalign.reward.judges import (FACTUALITY_TEMPLATE, FALSE_REFUSAL_TEMPLATE, SAFETY_TEMPLATE,
                                    factuality_judge, false_refusal_judge, safety_judge)
from tests.reward.tiny_lm import CFG, PARAMS, TOKENIZER, next_token_logprobs_direct

# The toy word tokenizer has no " Yes"/" No": its own words stand in for the pair.
KW = dict(positive="fine", negative="poor", max_length=128, min_bucket=128, batch_size=4)
PROMPTS = ["tell me about your morning", "describe the city", "write a story of your friend",
           "tell me about the garden"]
RESPONSES = ["a good day and we saw the river", "the dark cold road", "sad",
             "the sky was very bright then"]
META = [{"answer": "the river"}, {"answer": "a cat"}, {"answer": "the tree"},
        {"answer": "a kind friend"}]


@pytest.mark.parametrize("make, name, template", [
    (false_refusal_judge, "false_refusal", FALSE_REFUSAL_TEMPLATE),
    (factuality_judge, "factuality", FACTUALITY_TEMPLATE),
    (safety_judge, "safety", SAFETY_TEMPLATE),
], ids=["false_refusal", "factuality", "safety"])
def test_names_templates_and_the_yes_no_pair(make, name, template):
    # The default pair is " Yes" / " No": the toy tokenizer cannot encode it.
    with pytest.raises(ValueError, match=r"designated token ' Yes' encodes to \[3\]"):
        make(CFG, PARAMS, TOKENIZER)
    judge = make(CFG, PARAMS, TOKENIZER, **KW)
    assert judge.name == name and judge.template == template
    assert template.endswith("Answer Yes or No.\nAnswer:")
    assert judge.probe.token_ids == (TOKENIZER.convert_tokens_to_ids("fine"),
                                     TOKENIZER.convert_tokens_to_ids("poor"))


def test_verdicts_are_p_positive_above_p_negative_from_the_logits():
    judges = [false_refusal_judge(CFG, PARAMS, TOKENIZER, **KW),
              factuality_judge(CFG, PARAMS, TOKENIZER, **KW),
              safety_judge(CFG, PARAMS, TOKENIZER, **KW)]
    out = MixtureOfJudges(judges)(PROMPTS, RESPONSES, META)
    assert out.names == ("false_refusal", "factuality", "safety")
    for j, judge in enumerate(judges):
        pos, neg = judge.probe.token_ids
        lp = np.array([next_token_logprobs_direct(judge.render(p, r, m), (pos, neg))
                       for p, r, m in zip(PROMPTS, RESPONSES, META)])
        np.testing.assert_array_equal(out.verdicts[:, j], lp[:, 0] > lp[:, 1])
        np.testing.assert_allclose(out.scores[judge.name], np.exp(lp[:, 0]) /
                                   (np.exp(lp[:, 0]) + np.exp(lp[:, 1])), atol=1e-5)
    # One example by hand: the softmax of the last position's logits, the two entries compared.
    first = judges[1].render(PROMPTS[0], RESPONSES[0], META[0])
    p_pos, p_neg = np.exp(next_token_logprobs_direct(first, judges[1].probe.token_ids))
    assert out.verdicts[0, 1] == (p_pos > p_neg)
    assert 0 < out.verdicts.sum() < out.verdicts.size, "all verdicts alike: pick other texts"


def test_factuality_prompt_shows_the_ground_truth_and_names_missing_metadata():
    judge = factuality_judge(CFG, PARAMS, TOKENIZER, answer_key="truth", **KW)
    text = judge.render("describe the city", "the sky", {"truth": "a calm river"})
    assert "Correct answer: a calm river\n" in text
    assert text.startswith("You check") and "Question: describe the city" in text
    assert "Response: the sky" in text
    with pytest.raises(KeyError, match="judge 'factuality': response 1 has no metadata 'truth'"):
        judge(PROMPTS[:2], RESPONSES[:2], [{"truth": "a cat"}, {"answer": "a cat"}])
    with pytest.raises(ValueError, match=r"no \{truth\} field"):
        factuality_judge(CFG, PARAMS, TOKENIZER, answer_key="truth", template="{response}",
                         **KW)
