"""Bucketing and the batch dicts."""

import chex
import jax
import numpy as np
import pytest

from jaxalign.data import BatchIterator, bucket_lengths, collate, pick_bucket
from tests.data.helpers import make_dataset


def test_bucket_lengths():
    assert bucket_lengths(512) == (64, 128, 256, 512)
    assert bucket_lengths(300) == (64, 128, 256, 300)
    assert bucket_lengths(300, multiple=128) == (128, 256, 300)
    assert bucket_lengths(256, multiple=64) == (64, 128, 192, 256)
    assert bucket_lengths(40) == (40,)
    assert [pick_bucket(n, (64, 128, 300)) for n in (1, 64, 65, 129, 300)] == [64, 64, 128, 300,
                                                                               300]
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        pick_bucket(301, (64, 128, 300))


@pytest.mark.parametrize("max_length, multiple", [(300, None), (256, 64)])
def test_every_batch_length_is_a_bucket(max_length, multiple):
    ds = make_dataset(n=64, max_length=max_length)
    buckets = bucket_lengths(max_length, min_length=32, multiple=multiple)
    it = BatchIterator(ds, batch_size=2, buckets=buckets, num_epochs=2)
    seen = set()
    for batch in it:
        T = batch["chosen_tokens"].shape[1]
        assert T in buckets and T <= max_length
        assert batch["rejected_tokens"].shape[1] == T
        longest = ds.lengths[batch["index"][batch["index"] >= 0]].max()
        assert T == min(b for b in buckets if b >= longest)  # the smallest that fits
        seen.add(T)
    assert len(seen) > 1


def test_buckets_must_fit_max_length():
    ds = make_dataset(max_length=256)
    with pytest.raises(ValueError, match="not exceed max_length"):
        BatchIterator(ds, batch_size=4, buckets=(128, 512))
    with pytest.raises(ValueError, match="must hold the longest record"):
        BatchIterator(ds, batch_size=4, buckets=(64,))


def test_collate_preference_by_hand():
    r = {"prompt": np.array([1, 5, 6], np.int32), "chosen": np.array([7, 2], np.int32),
         "rejected": np.array([8, 9, 10, 2], np.int32)}
    batch = collate("preference", [r, None], np.array([4, -1]), 8, pad_id=0)
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
        **{f"{s}_{k}": ((2, 8), d) for s in ("chosen", "rejected")
           for k, d in (("tokens", "int32"), ("mask", "bool"), ("loss_mask", "bool"))},
        "index": ((2,), "int64")}
    np.testing.assert_array_equal(batch["chosen_tokens"][0], [1, 5, 6, 7, 2, 0, 0, 0])
    np.testing.assert_array_equal(batch["chosen_mask"][0], [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(batch["chosen_loss_mask"][0], [0, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(batch["rejected_tokens"][0], [1, 5, 6, 8, 9, 10, 2, 0])
    np.testing.assert_array_equal(batch["rejected_loss_mask"][0], [0, 0, 0, 1, 1, 1, 1, 0])
    assert not batch["chosen_mask"][1].any() and not batch["rejected_loss_mask"][1].any()
    np.testing.assert_array_equal(batch["index"], [4, -1])


def test_collate_sft_and_prompt_by_hand():
    r = {"prompt": np.array([1, 5], np.int32), "completion": np.array([7, 2], np.int32)}
    batch = collate("sft", [r], np.array([0]), 6, pad_id=9)
    np.testing.assert_array_equal(batch["tokens"][0], [1, 5, 7, 2, 9, 9])
    np.testing.assert_array_equal(batch["loss_mask"][0], [0, 0, 1, 1, 0, 0])
    batch = collate("prompt", [{"prompt": np.array([1, 5], np.int32), "id": "a"}, None],
                    np.array([3, -1]), 4, pad_id=9)
    np.testing.assert_array_equal(batch["tokens"], [[1, 5, 9, 9], [9, 9, 9, 9]])
    np.testing.assert_array_equal(batch["mask"], [[1, 1, 0, 0], [0, 0, 0, 0]])
    assert list(batch["id"]) == ["a", ""]


def test_one_compilation_per_bucket():
    ds = make_dataset(n=64, max_length=300)
    buckets = bucket_lengths(300, min_length=32)

    @jax.jit
    @chex.assert_max_traces(n=len(buckets))
    def completion_tokens(batch):
        return batch["chosen_loss_mask"].sum() + batch["rejected_loss_mask"].sum()

    total = 0
    for batch in BatchIterator(ds, batch_size=2, buckets=buckets, num_epochs=3):
        total += int(completion_tokens({k: v for k, v in batch.items() if k != "index"}))
    expected = sum(len(r["chosen"]) + len(r["rejected"]) for r in ds) * 3
    assert total == expected
