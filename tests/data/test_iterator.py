"""The iterator: deterministic order, exact resume, host sharding, padding rows."""

import json

import numpy as np
import pytest

from jaxalign.data import BatchIterator
from tests.data.helpers import assert_same, make_dataset, take

N, B = 37, 8  # 5 batches per epoch, the last with 5 records and 3 padding rows


def test_each_epoch_is_a_permutation():
    it = BatchIterator(make_dataset(), batch_size=B, seed=3)
    assert it.batches_per_epoch == 5
    epochs = []
    for _ in range(3):
        index = np.concatenate([b["index"] for b in take(it, 5)])
        assert (index[N:] == -1).all()
        assert sorted(index[:N]) == list(range(N))
        epochs.append(index[:N])
    assert not np.array_equal(epochs[0], epochs[1])
    again = BatchIterator(make_dataset(), batch_size=B, seed=3)
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in take(again, 5)])[:N],
                                  epochs[0])


@pytest.mark.parametrize("stop", [2, 4, 5, 7, 10])  # mid-epoch, last batch, boundary, later
def test_resume_gives_the_same_batches(stop):
    ds = make_dataset()
    reference = take(BatchIterator(ds, batch_size=B, seed=1), 14)
    it = BatchIterator(ds, batch_size=B, seed=1)
    take(it, stop)
    state = json.loads(json.dumps(it.state()))  # what a checkpoint stores
    assert state == {"epoch": stop // 5, "position": stop % 5}
    resumed = BatchIterator(ds, batch_size=B, seed=1)
    resumed.restore(state)
    assert_same(take(resumed, 14 - stop), reference[stop:])


def test_restore_rejects_bad_state():
    it = BatchIterator(make_dataset(), batch_size=B)
    with pytest.raises(ValueError, match="out of range"):
        it.restore({"epoch": 0, "position": 5})


@pytest.mark.parametrize("kind", ["preference", "sft"])
def test_hosts_partition_the_global_batch(kind):
    ds = make_dataset(kind=kind)
    whole = take(BatchIterator(ds, batch_size=B, seed=2), 7)
    hosts = [take(BatchIterator(ds, batch_size=B, seed=2, process_index=h, process_count=4), 7)
             for h in range(4)]
    for k, global_batch in enumerate(whole):
        parts = [h[k] for h in hosts]
        assert all(p["index"].shape == (B // 4,) for p in parts)
        for key in global_batch:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]),
                                          global_batch[key], err_msg=key)
    with pytest.raises(ValueError, match="divisible"):
        BatchIterator(ds, batch_size=B, process_count=3)


def test_padding_rows_are_masked():
    last = take(BatchIterator(make_dataset(), batch_size=B, seed=0), 5)[-1]
    pad = last["index"] == -1
    assert pad.sum() == 3
    for side in ("chosen", "rejected"):
        assert not last[f"{side}_mask"][pad].any() and not last[f"{side}_loss_mask"][pad].any()
        assert (last[f"{side}_tokens"][pad] == 0).all()
        assert last[f"{side}_mask"][~pad].any(axis=1).all()


def test_epochs_and_remainder():
    ds = make_dataset()
    assert len(list(BatchIterator(ds, batch_size=B, num_epochs=2))) == 10
    dropped = list(BatchIterator(ds, batch_size=B, num_epochs=1, drop_remainder=True))
    assert len(dropped) == 4 and all((b["index"] >= 0).all() for b in dropped)
    ordered = list(BatchIterator(ds, batch_size=B, num_epochs=1, shuffle=False))
    assert list(np.concatenate([b["index"] for b in ordered])[:N]) == list(range(N))
    with pytest.raises(ValueError, match="no batch"):
        BatchIterator(make_dataset(n=5), batch_size=B, drop_remainder=True)
