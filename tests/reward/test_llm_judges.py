"""CGPO's three LLM judges on a tiny random Llama: names and token pairs, the ground truth in
the factuality prompt, verdicts = p(pos) > p(neg) from the model's logits, missing metadata."""

import numpy as np
import pytest

from jaxalign.reward.judges import (FACTUALITY_TEMPLATE, FALSE_REFUSAL_TEMPLATE, SAFETY_TEMPLATE,
                                    factuality_judge, false_refusal_judge, safety_judge)
from tests.reward.tiny_lm import CFG, PARAMS, TOKENIZER, next_token_logprobs_direct

# The toy word tokenizer has no " Yes"/" No": its own words stand in for the pair.
KW = dict(positive="fine", negative="poor", max_length=128, min_bucket=128, batch_size=4)
# Same word counts everywhere: every rendered prompt has one length (one compile by hand).
PROMPTS = ["tell me about morning", "describe the city garden", "write a story of",
           "tell me about garden", "describe your friend morning", "write the city story"]
RESPONSES = ["a good day then", "the dark cold road", "sad and very angry", "the sky was bright",
             "we saw it then", "kind and warm house"]
META = [{"answer": a} for a in ("the river", "a cat", "the tree", "a friend", "calm sky",
                                "the road")]


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
    judge = factuality_judge(CFG, PARAMS, TOKENIZER, **KW)
    out = judge(PROMPTS, RESPONSES, META)
    pos, neg = judge.probe.token_ids
    lp = np.array([next_token_logprobs_direct(judge.render(p, r, m), (pos, neg))
                   for p, r, m in zip(PROMPTS, RESPONSES, META)])
    np.testing.assert_array_equal(out.passed, lp[:, 0] > lp[:, 1])
    np.testing.assert_allclose(out.scores, np.exp(lp[:, 0]) / np.exp(lp).sum(1), atol=1e-5)
    assert 0 < out.passed.sum() < len(PROMPTS), "all verdicts alike: pick other texts"
    # One example by hand: p(pos) and p(neg) from the softmax of the last logits, compared.
    p_pos, p_neg = np.exp(lp[0])
    assert out.passed[0] == (p_pos > p_neg)


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
