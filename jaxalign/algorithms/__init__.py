"""Algorithm loops (DPO, ReST, SPPO, CGPO): each a thin composition of sampling, data and train.

grow.py  the grow step shared by ReST, SPPO and CGPO: sample n completions per prompt into
         resumable JSONL shards (with optional scores)
"""
