import math

import numpy as np

from jaxalign.gym import language as L


def ids(s):
    return [L.ID[w] for w in s.split()]


def test_tokenizer_one_symbol_one_token():
    tk = L.tokenizer()
    assert len(tk) == len(L.VOCAB)
    text = "#news day cat : good river </s>"
    assert tk(text)["input_ids"] == [L.BOS] + ids(text)
    assert tk.decode(ids("good river </s>"), skip_special_tokens=True) == "good river"
    assert (tk.bos_token_id, tk.eos_token_id, tk.pad_token_id) == (L.BOS, L.EOS, L.PAD)


def test_arithmetic_logprobs_by_hand():
    lang = L.Language(L.LanguageConfig(arith_correct=0.3, arith_clean_end=0.9))
    p = [L.BOS] + ids("add 3 4 =")
    lp = lang.logprobs([p, p, p], [ids("7 </s>"), ids("5 </s>"), ids("7 cat </s>")])
    np.testing.assert_allclose(lp.sum(-1), [math.log(0.3) + math.log(0.9),
                                            math.log(0.7 / 9) + math.log(0.9),
                                            math.log(0.3) + math.log(0.1 / 32) + 0.0])


def test_next_probs_normalised_and_order_two():
    lang = L.Language()
    prompts = lang.sample_prompts(64, 0)
    comps = lang.sample(prompts, 1)
    lp = lang.logprobs(prompts, comps)
    assert np.isfinite(lp).all()
    assert all(c[-1] == L.EOS and len(c) <= lang.cfg.max_completion for c in comps)
    parsed = L.parse(prompts)
    B = len(prompts)
    probs = lang.next_probs(parsed, np.full(B, L.ID["cat"]), np.full(B, L.ID["day"]), 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    text = parsed.kind == L.TEXT
    assert (probs[text, L.ID["cat"]] == 0).all()  # never back to the word two steps ago
    last = lang.next_probs(parsed, np.full(B, -1), np.full(B, L.ID["day"]),
                           lang.cfg.max_completion - 1)
    assert (last[:, L.EOS] == 1).all()


def test_sampling_matches_next_probs():
    lang = L.Language()
    prompts = [[L.BOS] + ids("#food cat tree :")] * 4000
    first = np.array([c[0] for c in lang.sample(prompts, 3)])
    expect = lang.next_probs(L.parse(prompts[:1]), np.full(1, -1), np.full(1, L.ID[":"]), 0)[0]
    freq = np.bincount(first, minlength=len(L.VOCAB)) / len(first)
    assert np.abs(freq - expect).max() < 0.03


def test_keywords_and_topics_change_the_process():
    lang = L.Language()
    a = lang.next_probs(L.parse([[L.BOS] + ids("#food cat tree :")]), np.full(1, -1),
                        np.full(1, L.ID[":"]), 0)
    b = lang.next_probs(L.parse([[L.BOS] + ids("#news cat tree :")]), np.full(1, -1),
                        np.full(1, L.ID[":"]), 0)
    assert not np.allclose(a, b)
