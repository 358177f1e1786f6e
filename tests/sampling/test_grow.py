"""The grow step: JSONL prompts in, sharded JSONL completions out; killed and restarted, it
writes the same records as an uninterrupted run, none twice, none partial."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jaxalign.algorithms.grow import grow, read_shards
from jaxalign.io import is_committed
from jaxalign.data import DataError

WORDS = "the cat dog sat on mat ran fast red blue one two three hello world how are you".split()
SETTINGS = dict(n=2, shard_size=2, batch_size=2, temperature=1.0, top_p=0.9, max_new_tokens=8)


def score(prompts, completions):  # a batch's (prompt, completion) pairs -> one score each
    return [len(c) + 0.5 * len(p) for p, c in zip(prompts, completions)]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    rows = [{"prompt": " ".join(WORDS[i % 7: i % 7 + 2 + i % 5])} for i in range(11)]
    rows[3]["id"] = "custom-3"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def reference(prompts_file, llama_dir, tmp_path_factory):
    """An uninterrupted run: (shard paths, records)."""
    out = str(tmp_path_factory.mktemp("ref"))
    paths = grow(prompts_file, llama_dir, out_dir=out, score_fn=score, score_id="score",
                 progress=False, **SETTINGS)
    return paths, read_shards(paths)


def test_records_cover_every_prompt_and_sample(reference, tokenizer):
    paths, records = reference
    assert [os.path.basename(p) for p in paths] == [f"shard-{k:05d}-of-00006.jsonl"
                                                    for k in range(6)]
    assert len(records) == 11 * 2
    assert {(r["id"], r["sample"]) for r in records} == {
        (i, j) for i in [str(k) for k in range(11) if k != 3] + ["custom-3"] for j in (0, 1)}
    for r in records:
        assert r["length"] == len(r["tokens"]) == len(r["logprobs"]) == len(r["model_logprobs"])
        assert r["score"] == score([r["prompt"]], [r["completion"]])[0]
        body = r["tokens"][:-1] if r["stop_reason"] == "stop" else r["tokens"]
        assert r["completion"].lstrip() == tokenizer.decode(body, skip_special_tokens=True)
        assert r["prompt_tokens"] == tokenizer(r["prompt"])["input_ids"]
        assert all(lp <= 0 for lp in r["logprobs"])


def test_killed_run_restarts_to_the_same_records(reference, prompts_file, llama_dir, tmp_path):
    out = str(tmp_path / "killed")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from jaxalign.algorithms.grow import grow
        def slow(prompts, completions):
            time.sleep(0.8)  # so the run is still going when it is killed
            return [len(c) + 0.5 * len(p) for p, c in zip(prompts, completions)]
        grow({prompts_file!r}, {llama_dir!r}, out_dir={out!r}, score_fn=slow, score_id="score",
             progress=False,
             **{SETTINGS!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # (a marker that exists may still be half written: wait for one that vouches for its shard)
    while not (os.path.isdir(out) and any(f.startswith("shard") and f.endswith(".jsonl")
                                          and is_committed(os.path.join(out, f))
                                          for f in os.listdir(out))):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(f for f in os.listdir(out) if f.endswith(".jsonl")
                  and is_committed(os.path.join(out, f)))
    assert 1 <= len(done) < 6  # killed mid-run
    for f in done:  # committed shards are whole: every line a full record
        assert len(read_shards([os.path.join(out, f)])) in (4, 2)
    torn = os.path.join(out, done[0])  # a shard whose bytes no longer match its marker
    with open(torn, "a") as fh:
        fh.write('{"id": "torn"')
    assert not is_committed(torn)

    paths = grow(prompts_file, llama_dir, out_dir=out, score_fn=score, score_id="score",
                 progress=False, **SETTINGS)
    got = read_shards(paths)
    want = reference[1]
    assert len(got) == len(want) == len({(r["id"], r["sample"]) for r in got})
    key = lambda r: (str(r["id"]), r["sample"])
    assert sorted(got, key=key) == sorted(want, key=key)


def test_restart_with_other_settings_is_refused(reference, prompts_file, llama_dir):
    out = os.path.dirname(reference[0][0])
    with pytest.raises(ValueError, match="other settings"):
        grow(prompts_file, llama_dir, out_dir=out, progress=False, **{**SETTINGS, "n": 3})


def test_malformed_row_names_file_and_line(tmp_path, llama_dir):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "the cat"}\n{"prompt": "a dog"\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        grow(str(path), llama_dir, out_dir=str(tmp_path / "out"), n=1, progress=False)
    path.write_text('{"prompt": "the cat"}\n\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: field 'prompt' is missing"):
        grow(str(path), llama_dir, out_dir=str(tmp_path / "out"), n=1, progress=False)


def test_in_memory_prompts_and_sampler_policy(llama, tokenizer, tmp_path):
    cfg, params = llama
    paths = grow(["the cat sat", {"prompt": "hello world", "id": 7}], (cfg, params),
                 tokenizer=tokenizer, out_dir=str(tmp_path), progress=False, **SETTINGS)
    records = read_shards(paths)
    assert [(r["id"], r["sample"]) for r in records] == [(0, 0), (0, 1), (7, 0), (7, 1)]


def test_guided_sampler_records_each_arm_token_reward(llama, tokenizer, tmp_path):
    """A GenARM-guided sampler as the policy: records carry log pi_r(y_t) per ARM and token."""
    import numpy as np

    from jaxalign.reward.arm import arm_token_rewards
    from jaxalign.sampling import GuideModel, Sampler

    cfg, params = llama
    sampler = Sampler(cfg, params, tokenizer, max_len=32,
                      guides=[GuideModel(cfg, params, weight=0.5)])
    [path] = grow(["the cat sat"], sampler, out_dir=str(tmp_path), progress=False, **SETTINGS)
    for r in read_shards([path]):
        assert np.array(r["guide_logprobs"]).shape == (1, r["length"])
        # the ARM here is the policy itself: its token rewards are the model's log-probs
        # (the sampler normalises over the tokenizer's ids; the model over its whole vocab)
        p, c = r["prompt_tokens"], r["tokens"]
        t = np.array([p + c], np.int32)
        comp = np.array([[False] * len(p) + [True] * len(c)])
        want = np.asarray(arm_token_rewards(cfg, params, t, np.ones_like(t, bool), comp))[0]
        np.testing.assert_allclose(r["guide_logprobs"][0], r["model_logprobs"], atol=1e-5)
        np.testing.assert_allclose(want[len(p):], r["model_logprobs"], atol=1e-4)
