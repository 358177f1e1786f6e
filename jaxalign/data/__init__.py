"""Data: preference / SFT / prompt files -> token records -> fixed-shape numpy batches.

    ds, report = load_dataset("preference", "train.jsonl", tokenizer)   # dataset.py
    it = BatchIterator(ds, batch_size=64, seed=0)                        # iterator.py
    batch = next(it); state = it.state()  # ... later: it.restore(state)

    ds = from_token_rows("group", rows, pad_id=0, max_length=1024,       # generated.py
                         columns={"reward": "float32"}, vocab_size=len(tokenizer))

Kinds: "preference" (chosen/rejected pairs), "sft" (prompt + completion), "prompt" (prompts
to sample from), "group" (K completions of one prompt, from generated ids: SPPO, CGPO).
A dataset may carry scalar `columns` (reward, win rates, source id, ...): each becomes a
batch entry dtype[B] ([B,K] for group). Batch keys per kind: batching.py's docstring.

readers.py   rows of JSONL/Parquet, checked and normalised (formats in its docstring)
tokenize.py  chat-template / plain tokenization, the prompt/completion boundary, truncation
generated.py datasets from token ids a sampler generated (never re-tokenized), checked row by row
batching.py  bucket lengths and the batch dicts (keys and columns in its docstring)
iterator.py  deterministic, resumable, host-sharded batches
records.py   token records as a TFDS array_record dataset, read without TensorFlow
errors.py    DataError (names file and line) and the Report of skipped rows
"""

from jaxalign.data.batching import bucket_lengths, collate, pick_bucket
from jaxalign.data.dataset import TokenizedDataset, iter_records, load_dataset
from jaxalign.data.errors import DataError, Report
from jaxalign.data.generated import from_token_rows
from jaxalign.data.iterator import BatchIterator
from jaxalign.data.readers import read_examples
from jaxalign.data.records import RecordSource, open_records, write_records
from jaxalign.data.tokenize import Encoder, tokenize_example, truncate

__all__ = [
    "BatchIterator", "DataError", "Encoder", "RecordSource", "Report", "TokenizedDataset",
    "bucket_lengths", "collate", "from_token_rows", "iter_records", "load_dataset",
    "open_records", "pick_bucket", "read_examples", "tokenize_example", "truncate",
    "write_records",
]
