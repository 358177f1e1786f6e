"""Registry lookup and the argument errors raised before tracing."""

import chex
import jax
import numpy as np
import pytest

from jaxalign.losses import dpo, get_loss, list_losses, sppo

REQUIRED = [
    "dpo.sigmoid", "dpo.cdpo", "dpo.robust", "dpo.ipo", "dpo.ipo_length_normalized", "dpo.hinge",
    "dpo.simpo", "dpo.orpo", "dpo.reference_free", "sppo.sppo", "sppo.single", "sppo.hard",
    "genarm.arm", "rest.thresholded_nll", "cgpo.crpg", "cgpo.codpo", "cgpo.crraft",
    "dpo.nca_pair", "dpo.bco_pair", "dpo.exo_pair", "dpo.apo_zero", "dpo.apo_down",
    "dpo.sigmoid_norm", "dpo.discopop",
]
ONES = np.ones(2, np.float32)
LOGPS = dict(policy_chosen_logps=-ONES, policy_rejected_logps=-2 * ONES,
             ref_chosen_logps=-ONES, ref_rejected_logps=-ONES)


def test_registry_lists_every_loss():
    assert list_losses() == sorted(REQUIRED)
    assert get_loss("dpo.sigmoid") is dpo.sigmoid
    assert get_loss("sppo.single") is sppo.sppo_single


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown loss 'dpo.kto'") as e:
        get_loss("dpo.kto")
    assert all(name in str(e.value) for name in REQUIRED)


def test_mismatched_shapes():
    with pytest.raises(ValueError, match=r"Shapes must match.*ref_rejected_logps\[3\]"):
        dpo.sigmoid(**{**LOGPS, "ref_rejected_logps": np.zeros(3)}, beta=0.1)


@pytest.mark.parametrize("beta", [0.0, -0.1, np.float32(0.0)])
@pytest.mark.parametrize("name", ["dpo.sigmoid", "dpo.simpo", "sppo.hard", "genarm.arm"])
def test_non_positive_beta(name, beta):
    lengths = dict(chosen_lengths=ONES, rejected_lengths=ONES)
    with pytest.raises(ValueError, match="beta must be > 0"):
        get_loss(name)(**LOGPS, **lengths, beta=beta)


@pytest.mark.parametrize("eps", [0.5, 0.7, -0.1])
@pytest.mark.parametrize("name", ["dpo.cdpo", "dpo.robust"])
def test_label_smoothing_outside_range(name, eps):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0.0, 0.5\)"):
        get_loss(name)(**LOGPS, beta=0.1, label_smoothing=eps)


def test_missing_inputs():
    with pytest.raises(ValueError, match="dpo.sigmoid needs ref_chosen_logps, ref_rejected_logps"):
        dpo.sigmoid(policy_chosen_logps=-ONES, policy_rejected_logps=-ONES, beta=0.1)
    with pytest.raises(ValueError, match="dpo.simpo needs chosen_lengths, rejected_lengths"):
        dpo.simpo(**LOGPS, beta=0.1)


def test_non_square_preference_matrix():
    with pytest.raises(ValueError, match="square"):
        sppo.win_rates_from_matrix(preferences_NxKxK=np.zeros((1, 5, 4)))


def test_traced_beta_is_not_checked():
    loss = jax.jit(lambda b: dpo.sigmoid(**LOGPS, beta=b)[0])(0.5)
    np.testing.assert_allclose(loss, np.log1p(np.exp(-0.5)) * ONES, rtol=1e-6)


def test_no_retrace_for_new_hyperparameter_values():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss(logps, beta, eps):
        return dpo.robust(**logps, beta=beta, label_smoothing=eps)[0]

    for beta, eps in [(0.1, 0.0), (0.5, 0.2), (1.0, 0.4)]:
        chex.assert_shape(loss(LOGPS, beta, eps), (2,))
