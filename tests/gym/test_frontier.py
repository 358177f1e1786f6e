import os

from experiments import dpo_frontier
from jaxalign.main import run_config


def _run(workdir, cache):
    c = dpo_frontier.get_config("smoke")
    c.workdir, c.cache_dir = str(workdir), cache
    rows = run_config(c)  # the entry point's dispatch: algorithm "dpo_frontier"
    return rows, open(os.path.join(workdir, "frontier.md")).read()


def test_smoke_frontier_is_deterministic_and_dpo_helps(ref, ref_cache, tmp_path):
    rows, table = _run(tmp_path / "a", ref_cache)
    _, table2 = _run(tmp_path / "b", ref_cache)
    assert table == table2
    assert os.path.getsize(tmp_path / "a" / "frontier.png") > 1000
    base = next(r for r in rows if r["method"] == "reference")
    dpo = [r for r in rows if r["method"] == "dpo"]
    assert all(r["reward"] > base["reward"] for r in dpo)
