"""Issue #14, class 3: damaged checkpoints.

Damage to the newest checkpoint (a truncated or deleted file, lost metadata, an empty step
directory, flipped bits that still decode as finite numbers, corrupt JSON) makes restore move it
aside to `<step>.damaged` with a warning naming it and what is wrong, and restore the one before
it; Orbax's own bookkeeping files, when lost, do not matter (the content is verified by
checksums) and the checkpoint is restored. With no intact checkpoint left, the error names each
damaged one. A fall-back restart finishes bit-identical to an uninterrupted run.
"""

import glob
import json
import os
import re
import shutil
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxalign.train.checkpoint import (CheckpointMismatch, Checkpointer, DamagedCheckpoint,
                                       abstract_like)
from jaxalign.train.trainer import run_loop
from tests.hardening.test_nan_guard import Batches, assert_trees_equal, host, trainer
from tests.train.batches import TINY


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run of 4 steps with checkpoints at 2 and 4 (sharded params and Adam state); the host
    states at each checkpoint and the restore target."""
    workdir = tmp_path_factory.mktemp("pristine")
    states = {}
    with trainer(workdir, 4) as t:
        run_loop(t, Batches(), on_step=lambda s: states.__setitem__(s, host(t.state)))
        target = abstract_like(t.state)
    return {"dir": str(workdir / "checkpoints"), "workdir": workdir, "states": states,
            "target": target}


def _largest_array_file(step_dir) -> str:
    files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
    return max(files, key=os.path.getsize)


def truncate_array_file(s, ref):
    f = _largest_array_file(s)
    os.truncate(f, os.path.getsize(f) // 2)


def delete_array_file(s, ref):
    os.remove(_largest_array_file(s))


def flip_bits_still_finite(s, ref):
    """One bit of the largest array file (zstd-compressed chunks) flipped, at the first place
    from its middle on where Orbax still decodes every array, all finite, one of them changed:
    the silent corruption only the checksums see."""
    target, want = ref
    f = _largest_array_file(s)
    raw = bytearray(open(f, "rb").read())
    for at in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[at] ^= 1
        open(f, "wb").write(bytes(raw))
        try:
            with ocp.StandardCheckpointer() as c:
                got = host(c.restore(os.path.join(s, "state"), target))
        except Exception:  # noqa: BLE001 (a flip that breaks decoding: try the next bit)
            got = None
        if got is not None and all(np.isfinite(x).all() for x in jax.tree.leaves(got)) and \
                not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got),
                                                              jax.tree.leaves(want))):
            return
        raw[at] ^= 1
        open(f, "wb").write(bytes(raw))
    pytest.fail(f"{f}: no single flipped bit decoded silently")


def delete_state_metadata(s, ref):
    os.remove(os.path.join(s, "state", "_METADATA"))


def drop_an_array_from_state_metadata(s, ref):
    path = os.path.join(s, "state", "_METADATA")
    md = json.load(open(path))
    del md["tree_metadata"]["('params', 'w')"]
    json.dump(md, open(path, "w"))


def corrupt_state_metadata_json(s, ref):
    open(os.path.join(s, "state", "_METADATA"), "w").write('{"tree_metadata": {')


def delete_ocdbt_manifest(s, ref):
    os.remove(os.path.join(s, "state", "manifest.ocdbt"))


def delete_meta_item(s, ref):
    shutil.rmtree(os.path.join(s, "meta"))


def delete_data_item(s, ref):
    shutil.rmtree(os.path.join(s, "data"))


def empty_step_dir(s, ref):
    shutil.rmtree(s)
    os.mkdir(s)


def corrupt_meta_json(s, ref):
    open(os.path.join(s, "meta", "metadata"), "w").write('{"model": {')


def edit_meta_value(s, ref):
    """Still valid JSON, another model: an architecture mismatch only if it were intact."""
    path = os.path.join(s, "meta", "metadata")
    meta = json.load(open(path))
    meta["model"]["num_layers"] += 1
    json.dump(meta, open(path, "w"))


def corrupt_data_json(s, ref):
    open(os.path.join(s, "data", "metadata"), "w").write('{"i": ')


def edit_data_value(s, ref):
    open(os.path.join(s, "data", "metadata"), "w").write('{"i": 3}')


# Orbax's bookkeeping (timestamps, metrics, commit markers, per-process array lists): not
# needed to restore, and the arrays are verified by their checksums, so step 4 is restored.
def delete_checkpoint_metadata(s, ref):
    os.remove(os.path.join(s, "_CHECKPOINT_METADATA"))


def delete_commit_markers(s, ref):
    for f in glob.glob(os.path.join(s, "**", "commit_success.txt"), recursive=True):
        os.remove(f)


def delete_array_metadatas(s, ref):
    shutil.rmtree(os.path.join(s, "state", "array_metadatas"))


DAMAGE = {  # damage: what the warning says (None: harmless, step 4 restored)
    truncate_array_file: r"cannot read state/: ValueError: OUT_OF_RANGE: Error reading \"\w",
    delete_array_file: r"cannot read state/: ValueError: [A-Z_]+: Error reading \"\w",
    flip_bits_still_finite: r"array\(s\) read back differ from the ones saved \(checksum\): "
                            r"(params|opt_state)/",
    delete_state_metadata: r"state/_METADATA is missing",
    drop_an_array_from_state_metadata: r"does not list the arrays saved .*params/w",
    corrupt_state_metadata_json: r"cannot read the state's array metadata \(state/_METADATA, "
                                 r".*\): JSONDecodeError",
    delete_ocdbt_manifest: r"state/manifest.ocdbt is missing",
    delete_meta_item: r"the step directory has no meta/",
    delete_data_item: r"the step directory has no data/",
    empty_step_dir: r"the step directory is empty",
    corrupt_meta_json: r"cannot read meta/: JSONDecodeError",
    edit_meta_value: r"meta/ does not match the fingerprint saved with it",
    corrupt_data_json: r"cannot read data/: JSONDecodeError",
    edit_data_value: r"data/ .*does not match the fingerprint",
    delete_checkpoint_metadata: None,
    delete_commit_markers: None,
    delete_array_metadatas: None,
}


def _copy(saved, tmp_path) -> str:
    d = str(tmp_path / "checkpoints")
    shutil.copytree(saved["dir"], d)
    return d


@pytest.mark.parametrize("damage", DAMAGE, ids=[f.__name__ for f in DAMAGE])
def test_damaged_newest_checkpoint_falls_back_with_a_warning(saved, tmp_path, damage):
    d = _copy(saved, tmp_path)
    step4 = os.path.join(d, "last", "4")
    damage(step4, (saved["target"], saved["states"][4]))
    ckpt = Checkpointer(d, TINY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, data, _ = ckpt.restore(saved["target"])
    ckpt.close()
    said = [str(w.message) for w in caught if "damaged checkpoint" in str(w.message)]
    if DAMAGE[damage] is None:
        assert not said, said
        assert data == {"i": 4}
        assert_trees_equal(state, saved["states"][4])
        return
    assert len(said) == 1, said
    assert said[0].startswith(f"{step4}: damaged checkpoint: ")
    assert f"moved it to {step4}.damaged" in said[0]
    assert re.search(DAMAGE[damage], said[0]), said[0]
    assert data == {"i": 2}
    assert_trees_equal(state, saved["states"][2])
    assert os.path.isdir(step4 + ".damaged") and not os.path.exists(step4)
    assert Checkpointer(d, TINY).last.all_steps() == [2]  # Orbax no longer counts it


def test_every_checkpoint_damaged_is_an_error_naming_each(saved, tmp_path):
    d = _copy(saved, tmp_path)
    empty_step_dir(os.path.join(d, "last", "4"), None)
    flip_bits_still_finite(os.path.join(d, "last", "2"), (saved["target"], saved["states"][2]))
    with pytest.warns(UserWarning), pytest.raises(DamagedCheckpoint, match=(
            r"no intact checkpoint to restore: .*last/4: damaged checkpoint: the step directory "
            r"is empty.*last/2: damaged checkpoint: .*checksum.*run again to start "
            r"from step 0")):
        Checkpointer(d, TINY).restore(saved["target"])


def test_a_damaged_step_asked_for_by_number_is_an_error_and_stays(saved, tmp_path):
    d = _copy(saved, tmp_path)
    delete_meta_item(os.path.join(d, "last", "4"), None)
    with pytest.raises(DamagedCheckpoint, match=r"last/4: damaged checkpoint: .*no meta/"):
        Checkpointer(d, TINY).restore(saved["target"], step=4)
    assert os.path.isdir(os.path.join(d, "last", "4"))


def test_an_intact_checkpoint_of_another_model_is_still_a_mismatch(saved, tmp_path):
    d = _copy(saved, tmp_path)
    with pytest.raises(CheckpointMismatch, match="num_layers=2, this run has num_layers=3"):
        Checkpointer(d, TINY.replace(num_layers=3)).restore(saved["target"])
    assert os.path.isdir(os.path.join(d, "last", "4"))  # not taken for damage


def test_fall_back_restart_is_bit_identical_to_an_uninterrupted_run(saved, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(saved["workdir"], workdir)
    flip_bits_still_finite(str(workdir / "checkpoints" / "last" / "4"),
                           (saved["target"], saved["states"][4]))
    with pytest.warns(UserWarning, match=r"last/4: damaged checkpoint: .*checksum"):
        with trainer(workdir, 6) as t:
            run_loop(t, Batches())
            resumed = host(t.state)
    assert sorted(os.listdir(workdir / "checkpoints" / "last")) == ["2", "4", "4.damaged", "6"]
    with trainer(tmp_path / "uninterrupted", 6) as t:
        run_loop(t, Batches())
        assert_trees_equal(resumed, t.state)
    assert int(resumed.step) == 6


def test_a_damaged_best_checkpoint_is_an_error_naming_it(saved, tmp_path):
    state = jax.tree.map(lambda a, t: jax.device_put(a, t.sharding), saved["states"][4],
                         saved["target"])
    ckpt = Checkpointer(str(tmp_path), TINY, async_save=False, best_metric="eval/acc")
    ckpt.save_best(4, state, {"eval/acc": 0.9}, {"i": 4})
    ckpt.wait()
    delete_data_item(str(tmp_path / "best" / "4"), None)
    with pytest.warns(UserWarning), pytest.raises(DamagedCheckpoint, match=(
            r"best/4: damaged checkpoint: the step directory has no data/.*there is no older "
            r"best checkpoint")):
        Checkpointer(str(tmp_path), TINY, best_metric="eval/acc").restore(saved["target"],
                                                                          which="best")
