"""ReST on the gym through the entry point (smoke config): grow and improve steps raise the
proxy reward the paper reports, and the true reward is reported beside it."""

import json
import os

from experiments import rest_gym
from jaxalign.main import run_config


def test_smoke_rest_improves_the_proxy_reward(ref, ref_cache, tmp_path):
    c = rest_gym.get_config("smoke")
    c.workdir, c.cache_dir = str(tmp_path), ref_cache
    c.online.steps = c.online.checkpoint_every = 2  # the row only: RLOO learning is
    # tests/gym/test_online.py's
    report = run_config(c)
    for name in ("rest.md", "rest.json", "rest.png"):
        assert os.path.getsize(tmp_path / name) > 300, name
    rows = {e["method"]: e for e in report["table"]}
    print(json.dumps(rows, indent=1))
    bc, g1, g2 = rows["BC"]["reward"], rows["G=1 I=4"]["reward"], rows["G=2 I=3"]["reward"]
    assert g1 > bc and g2 > g1, (bc, g1, g2)
    assert all(abs(e["true_reward"]) < 1 for e in rows.values())  # reported, bounded by tanh
    # the online baseline's row (RLOO standing in for the paper's PPO), after BC in the table
    assert [e["method"] for e in report["table"]][:2] == ["BC", "OnlineRL (RLOO)"]
    assert rows["OnlineRL (RLOO)"]["paper_iwslt"] == 71.6
    assert (tmp_path / "seed0" / "rloo" / "metrics.jsonl").exists()
    # every stage's dataset rows, records and training logs are on disk and readable
    run_b = tmp_path / "seed0" / "B"
    assert (run_b / "iter_002" / "build_improve_3" / "rows.jsonl").exists()
    assert (run_b / "iter_002" / "train_improve_3" / "metrics.jsonl").exists()
