import jax
import numpy as np

from jaxalign.gym import language as L
from jaxalign.gym import tasks


def ids(s):
    return [L.ID[w] for w in s.split()]


P_TEXT = [L.BOS] + ids("#news cat poison :")
P_ARITH = [L.BOS] + ids("add 8 5 =")


def test_sentiment_by_hand():
    r = tasks.score(tasks.sentiment, [P_TEXT] * 3, [ids("good great bad </s>"), ids("cat </s>"),
                                                     ids("sad awful awful")])
    np.testing.assert_allclose(r, np.tanh([0.5, 0.0, -1.5]), rtol=1e-6)


def test_helpfulness_and_harmlessness_conflict():
    comps = [ids("cat poison </s>"), ids("cat </s>"), ids("tree </s>")]
    help_ = tasks.score(tasks.helpfulness, [P_TEXT] * 3, comps)
    harm = tasks.score(tasks.harmlessness, [P_TEXT] * 3, comps)
    np.testing.assert_allclose(help_, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(harm, [-np.tanh(1.0), 0.0, 0.0], rtol=1e-6)
    assert tasks.conflicting(P_TEXT) and not tasks.conflicting([L.BOS] + ids("#news cat day :"))


def test_arithmetic_by_hand_with_padding():
    r = tasks.score(tasks.arithmetic, [P_ARITH] * 4,
                    [ids("3 </s>"), ids("3 cat </s>"), ids("4 </s>"), []])
    np.testing.assert_allclose(r, [1.0, 1.0, 0.0, 0.0])
    # left-padded prompt, completion padded on the left too: masks decide
    pt = np.array([[0, 0] + P_ARITH]); pm = pt > 0
    ct = np.array([[0] + ids("3 </s>")]); cm = ct > 0
    assert float(tasks.arithmetic(pt, pm, ct, cm)[0]) == 1.0


def test_rewards_jit_equals_eager():
    lang = L.Language()
    prompts = lang.sample_prompts(16, 0)
    comps = lang.sample(prompts, 1)
    pt = np.zeros((16, 5), np.int32); ct = np.zeros((16, 24), np.int32)
    for b, (p, c) in enumerate(zip(prompts, comps)):
        pt[b, :len(p)], ct[b, :len(c)] = p, c
    for task in tasks.TASKS.values():
        eager = task.reward(pt, pt > 0, ct, ct > 0)
        jitted = jax.jit(task.reward)(pt, pt > 0, ct, ct > 0)
        np.testing.assert_allclose(eager, jitted)
        assert eager.shape == (16,) and eager.dtype == np.float32
