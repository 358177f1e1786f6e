"""Configuration: every setting that cannot work is an error naming it, before the train step
compiles; unknown config arguments list the known ones; every config has a dry run or says why
not; an unset, missing or empty data file is named."""

import glob
import importlib
import os

import pytest

from experiments import dpo_frontier, dpo_toy, reward_toy
from jaxalign import main
from jaxalign.algorithms.rest import rest_settings
from jaxalign.data import toy
from jaxalign.train import trainer


@pytest.fixture
def no_compile(monkeypatch):
    """Fails the test if a train step gets as far as compiling."""
    def compiled(*a, **k):
        raise AssertionError("the train step compiled before the setting was checked")
    monkeypatch.setattr(trainer, "compile_step", compiled)


def _toy(tmp_path, **sections):
    c = dpo_toy.get_config("smoke")
    c.workdir = str(tmp_path / "run")
    c.data.update(dict(toy_train=32, toy_eval=16))
    c.loop.progress_bar = False
    for section, values in sections.items():
        c[section].update(values)
    return c


def _empty(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    return str(path)


CASES = {  # case: (config sections, or a function of tmp_path giving them; error pattern)
    "log_every_0": (dict(loop=dict(log_every=0)), r"loop\.log_every must be an integer >= 1"),
    "checkpoint_every_0": (dict(loop=dict(checkpoint_every=0)), r"loop\.checkpoint_every"),
    "keep_checkpoints_0": (dict(loop=dict(keep_checkpoints=0)),
                           r"loop\.keep_checkpoints .*delete every checkpoint"),
    "micro_batches_0": (dict(loop=dict(micro_batches=0)), r"loop\.micro_batches"),
    "eval_every_negative": (dict(loop=dict(eval_every=-5)), r"loop\.eval_every"),
    "total_steps_negative": (dict(loop=dict(total_steps=-1)), r"loop\.total_steps"),
    "best_metric_without_eval_prefix": (dict(loop=dict(best_metric="reward_accuracy")),
                                        r"loop\.best_metric .*'eval/<name>'"),
    "batch_size_0": (dict(data=dict(batch_size=0)), r"config\.data\.batch_size of 0 rows"),
    "batch_not_dividing_devices": (dict(data=dict(batch_size=12)),
                                   r"config\.data\.batch_size of 12 rows .* over the 8 "
                                   r"data-parallel devices .* multiple of 8"),
    "batch_not_dividing_micro_batches": (
        dict(data=dict(batch_size=16), loop=dict(micro_batches=4)),
        r"16 rows does not split into loop\.micro_batches=4 .* multiple of 32"),
    "lr_schedule_shorter_than_warmup": (dict(optim=dict(total_steps=3, warmup_steps=5)),
                                        r"optim\.total_steps=3 must exceed warmup_steps=5"),
    "train_file_unset": (dict(data=dict(toy=False, train="", eval="x.jsonl")),
                         r"config\.data\.train is not set"),
    "train_file_missing": (lambda tmp: dict(data=dict(toy=False, train=str(tmp / "nope.jsonl"),
                                                      eval=_empty(tmp))),
                           r"nope\.jsonl: data file not found"),
    "train_file_empty": (lambda tmp: dict(data=dict(toy=False, train=_empty(tmp),
                                                    eval=_empty(tmp))),
                         r"config\.data\.train = .*empty\.jsonl: no usable preference rows"),
    "eval_file_empty": (lambda tmp: dict(data=dict(toy=False, train=toy.write_preference_jsonl(
        str(tmp / "train.jsonl"), 32, 0), eval=_empty(tmp))),
                        r"config\.data\.eval = .*empty\.jsonl: no usable preference rows"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_settings_are_named_before_compiling(tmp_path, no_compile, case):
    sections, pattern = CASES[case]
    sections = sections(tmp_path) if callable(sections) else sections
    with pytest.raises((ValueError, FileNotFoundError), match=pattern):
        main.run_config(_toy(tmp_path, **sections))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_unknown_best_metric_stops_at_the_first_evaluation(tmp_path):
    c = _toy(tmp_path, loop=dict(best_metric="eval/acuracy", total_steps=2))
    with pytest.raises(ValueError, match=r"'eval/acuracy' is not an evaluation metric .*"
                                         r"'eval/reward_accuracy'"):
        main.run_config(c)
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "last" / "1")  # no step ran


REST_CASES = {"samples": 0, "shard_size": 0, "score_chunk": 0, "sample_batch": 0,
              "max_new_tokens": 0, "improve_train_steps": 0, "eval_samples": 0,
              "temperature": float("nan"), "top_p": 0.0, "lr_decay": 0.0}


@pytest.mark.parametrize("key", sorted(REST_CASES))
def test_rest_settings_are_checked(key):
    with pytest.raises(ValueError, match=rf"rest\.{key} "):
        rest_settings({key: REST_CASES[key]})


@pytest.mark.parametrize("spec,known", [("experiments/dpo_toy.py:smok", "'smoke'"),
                                        ("experiments/rest_gym.py:full", "'smoke'")])
def test_unknown_config_argument_lists_the_known_ones(spec, known):
    with pytest.raises(SystemExit) as e:
        main.check_overrides(["--config", spec])
    message = str(e.value)
    assert "unknown config argument" in message and known in message
    assert "no argument: the full config" in message and "algorithm" not in message
    with pytest.raises(ValueError, match="unknown config argument 'smok'"):
        dpo_toy.get_config("smok")


def test_dry_run_works_or_says_why_not():
    report = main.run_config(dpo_toy.get_config(), dry_run=True)
    assert "cpu" in report["estimates"] and "loss" in report["metrics"]
    for config, why in ((dpo_frontier.get_config("smoke"), "gym runners train"),
                        (reward_toy.get_config("smoke"), "no abstract build")):
        with pytest.raises(main.app.UsageError, match=why):
            main.run_config(config, dry_run=True)


def test_default_workdirs_are_not_in_the_shared_temp_directory():
    for path in glob.glob(os.path.join(os.path.dirname(main.__file__), "..", "experiments",
                                       "[a-z]*.py")):
        name = os.path.basename(path)[:-3]
        module = importlib.import_module(f"experiments.{name}")
        for arg in ("", "smoke"):
            workdir = module.get_config(arg).workdir
            assert workdir.startswith("results/"), (name, arg, workdir)
