"""The pair value the pairwise losses are written on, and the paper symbols they accept."""

import ast
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses, objectives, reward
from jaxalign.losses import PairLogps, dpo, get_loss, sppo

f32 = lambda x: np.asarray(x, np.float32)
# Three pairs; the third has an empty chosen completion (|y_w| = 0 averages as |y_w| = 1).
PAIR = PairLogps(l_w=f32([-1.0, -4.0, 0.0]), l_l=f32([-3.0, -2.0, -6.0]),
                 ref_w=f32([-2.0, -3.0, -1.0]), ref_l=f32([-2.0, -3.0, -3.0]),
                 n_w=f32([2, 4, 0]), n_l=f32([1, 2, 3]))


EXPECTED = {
    "r_w": [1.0, -1.0, 1.0],        # l_w - ref_w
    "r_l": [-1.0, 1.0, -3.0],       # l_l - ref_l
    "h": [2.0, -2.0, 4.0],          # r_w - r_l
    "lbar_w": [-0.5, -1.0, 0.0],    # l_w / max(n_w, 1)
    "lbar_l": [-3.0, -1.0, -2.0],   # l_l / max(n_l, 1)
    "rbar_w": [0.5, -0.25, 1.0],    # r_w / max(n_w, 1)
    "rbar_l": [-1.0, 0.5, -1.0],    # r_l / max(n_l, 1)
}


@pytest.mark.parametrize("prop", EXPECTED)
def test_pair_properties_by_hand(prop):
    expected = EXPECTED[prop]
    np.testing.assert_array_equal(getattr(PAIR, prop), expected)
    # A pytree: the same value through jit.
    np.testing.assert_array_equal(jax.jit(lambda p: getattr(p, prop))(PAIR), expected)


def test_losses_build_the_pair_once_from_their_keywords():
    # The keyword call builds PairLogps in float32 (int lengths, bf16 log-probs) and applies
    # the equation to it: dpo.ipo_length_normalized is (rbar_w - rbar_l - 1/(2 beta))^2.
    kw = dict(policy_chosen_logps=jnp.asarray(PAIR.l_w, jnp.bfloat16),
              policy_rejected_logps=PAIR.l_l, ref_chosen_logps=PAIR.ref_w,
              ref_rejected_logps=PAIR.ref_l, chosen_lengths=PAIR.n_w.astype(np.int32),
              rejected_lengths=PAIR.n_l.astype(np.int32))
    loss, metrics = dpo.ipo_length_normalized(**kw, beta=0.5)
    assert loss.dtype == jnp.float32
    np.testing.assert_array_equal(loss, np.square(PAIR.rbar_w - PAIR.rbar_l - 1.0))
    np.testing.assert_array_equal(metrics["chosen_reward"], 0.5 * PAIR.rbar_w)
    with pytest.raises(TypeError, match="dpo.sigmoid: got an unexpected keyword argument 'bta'"):
        dpo.sigmoid(**kw, beta=0.1, bta=0.1)


WIN_RATES = dict(chosen_win_rate=f32([0.75, 0.6, 0.9]), rejected_win_rate=f32([0.25, 0.3, 0.1]),
                 pair_win_rate=f32([0.9, 0.5, 0.7]))


# (loss, the paper's symbol and value, the old keyword and its value giving the same loss)
RENAMED = [
    ("dpo.orpo", "lambda_", 0.1, "beta", 0.1),
    ("sppo.sppo", "eta", 2.0, "beta", 0.5),  # eta = 1/beta
    ("sppo.single", "eta", 1000.0, "beta", 1e-3),
    ("sppo.hard", "eta", 4.0, "beta", 0.25),
    ("genarm.arm", "beta_r", 0.05, "beta", 0.05),
]


@pytest.mark.parametrize("name, paper, paper_value, old, old_value", RENAMED,
                         ids=[case[0] for case in RENAMED])
def test_paper_symbol_and_old_keyword(name, paper, paper_value, old, old_value):
    fn = get_loss(name)
    kw = dict(policy_chosen_logps=PAIR.l_w - 1, policy_rejected_logps=PAIR.l_l,
              ref_chosen_logps=PAIR.ref_w, ref_rejected_logps=PAIR.ref_l,
              chosen_lengths=PAIR.n_w, rejected_lengths=PAIR.n_l,
              **(WIN_RATES if name.startswith("sppo.") else {}))
    loss_new, metrics_new = fn(**kw, **{paper: paper_value})
    loss_old, metrics_old = fn(**kw, **{old: old_value})
    np.testing.assert_array_equal(loss_new, loss_old)
    for k in metrics_old:
        np.testing.assert_allclose(metrics_new[k], metrics_old[k], rtol=1e-7, err_msg=k)
    both = rf"{name}: give {paper} or its old keyword {old}, not both"
    with pytest.raises(ValueError, match=re.escape(both)):
        fn(**kw, **{paper: paper_value, old: old_value})
    with pytest.raises(ValueError, match=re.escape(f"{name} needs {paper} (or its old keyword")):
        fn(**kw)
    with pytest.raises(ValueError, match=f"{paper} must be > 0"):
        fn(**kw, **{paper: 0.0})


def test_moved_functions_keep_their_old_import_paths():
    assert objectives.bradley_terry_loss is losses.bradley_terry_loss
    assert reward.bt_preference_matrix is sppo.bt_preference_matrix
    assert dpo.pair_metrics is losses.pair_metrics


def test_nothing_outside_losses_imports_its_private_names():
    root = pathlib.Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("jaxalign", "tests", "benchmarks", "experiments"):
        for path in (root / folder).rglob("*.py"):
            if path.is_relative_to(root / "jaxalign" / "losses"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom):
                    names = [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                offenders += [f"{path.relative_to(root)}:{node.lineno} {n}" for n in names
                              if n.startswith("jaxalign.losses.") and re.search(r"\._", n)]
    assert not offenders, offenders
