"""ReST from files (`config.algorithm = "rest"`, jaxalign/algorithms/run_rest.py): the paper
config's dry run sizes both 8B models exactly, and the smoke config runs end to end.

    .venv/bin/python -m pytest tests/algorithms/test_rest_files.py -q   # ~40 s on 2 CPU cores
"""

import json
import math
import os

from experiments import rest_llama3_8b
from jaxalign.main import run_config


def test_paper_config_dry_run_sizes_both_models_and_fits_its_slices():
    config = rest_llama3_8b.get_config()
    report = run_config(config, dry_run=True)
    # Meta-Llama-3-8B(-Instruct): 2 x 128256 x 4096 (embedding, LM head) + 32 layers + norm
    assert report["param_count"] == 8_030_261_248
    # Skywork-Reward-Llama-3.1-8B: vocab 128257 ([PAD] added), no LM head, score head [4096, 1]
    assert report["reward_param_count"] == 128_257 * 4096 + (8_030_261_248 - 2 * 128_256 * 4096
                                                             ) + 4096 == 7_504_932_864
    assert {"loss", "grad_norm", "nll", "kept"} <= set(report["metrics"])
    assert set(report["estimates"]) == {"v5p-16", "v5e-64"}
    for name, est in report["estimates"].items():
        hbm = report["hbm"][name]
        assert 0 < est.total < 0.9 * hbm, (name, est.table(hbm))
        assert est.kv_cache > 0 and est.reward_params > 0 and est.train.activations > 0
    # the sampler's cache for sample_batch * samples rows, split 8 ways, of P + N - 1 slots:
    # prompt bucket 512 + max_new_tokens 512 - 1 (the last token chosen is never fed back)
    rows = config.rest.sample_batch * config.rest.samples  # 64 x 25
    slots = 512 + 512 - 1
    per_row = 2 * 32 * 8 * 128 * slots * 2 + slots  # K and V, layers, KV heads, head dim, bf16
    assert report["estimates"]["v5p-16"].kv_cache == rows // 8 * per_row  # + the slot mask


def test_smoke_config_runs_bc_and_one_grow_step(tmp_path):
    config = rest_llama3_8b.get_config("smoke")
    config.workdir = str(tmp_path)
    out = run_config(config)
    with open(tmp_path / "rest_stages.json") as fh:
        stages = json.load(fh)
    assert [s["label"] for s in stages] == ["BC", "G1I0", "G1I1"] == [
        s["label"] for s in out["stages"]]
    assert [s["lr"] for s in stages] == [3e-3, 3e-3, 1.5e-3]  # halved per improve step
    assert stages[2]["threshold"] == "tau=0.7" and stages[2]["rows"] < stages[1]["rows"]
    assert stages[1]["rows"] == 16 * (2 + 1)  # D_g: 2 samples per prompt of D, plus D
    for s in stages:
        assert math.isfinite(s["eval/reward"]), s
        assert s["selected_step"] in (2, 4)
        assert os.path.isdir(os.path.join(s["dir"], "policy"))
    # D's rows kept their text and the data pipeline's token ids (scored records)
    scored = [json.loads(line) for name in sorted(os.listdir(tmp_path / "iter_000" / "score"))
              if name.endswith(".jsonl")
              for line in open(tmp_path / "iter_000" / "score" / name)]
    assert len(scored) == 16 and [r["id"] for r in scored] == list(range(16))
    assert all(r["origin"] == "data" and r["tokens"][-1] == 2 and r["prompt_tokens"][0] == 1
               for r in scored)  # EOS </s> = 2 ends the completion, BOS <s> = 1 starts the prompt
