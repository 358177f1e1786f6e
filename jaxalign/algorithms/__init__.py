"""Algorithm loops and runners (DPO, ARM, reward models; ReST, SPPO, CGPO): each a thin
composition of objectives, sampling, data and train.

runner.py      plumbing shared by runners: tokenizer, model (preset / HF), toy data, `Mapped`
               batch iterators, `pair_weight`
run_dpo.py     DPO-family and GenARM ARM training from a config, and its abstract dry run
run_reward.py  Bradley-Terry reward-model training from a config
grow.py        the grow step shared by ReST, SPPO and CGPO: sample n completions per prompt into
               resumable JSONL shards (with optional scores)

The runners are called by `python -m jaxalign --config ...` (jaxalign/main.py, `RUNNERS`).
"""
