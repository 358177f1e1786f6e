"""Data: preference / SFT / prompt files -> token records -> fixed-shape numpy batches.

    ds, report = load_dataset("preference", "train.jsonl", tokenizer)   # dataset.py
    it = BatchIterator(ds, batch_size=64, seed=0)                        # iterator.py
    batch = next(it); state = it.state()  # ... later: it.restore(state)

readers.py  rows of JSONL/Parquet, checked and normalised (formats in its docstring)
tokenize.py chat-template / plain tokenization, the prompt/completion boundary, truncation
batching.py bucket lengths and the batch dicts (keys in its docstring)
iterator.py deterministic, resumable, host-sharded batches
records.py  token records as a TFDS array_record dataset, read without TensorFlow
errors.py   DataError (names file and line) and the Report of skipped rows
"""

from jaxalign.data.batching import bucket_lengths, collate, pick_bucket
from jaxalign.data.dataset import TokenizedDataset, iter_records, load_dataset
from jaxalign.data.errors import DataError, Report
from jaxalign.data.iterator import BatchIterator
from jaxalign.data.readers import read_examples
from jaxalign.data.records import RecordSource, open_records, write_records
from jaxalign.data.tokenize import Encoder, tokenize_example, truncate

__all__ = [
    "BatchIterator", "DataError", "Encoder", "RecordSource", "Report", "TokenizedDataset",
    "bucket_lengths", "collate", "iter_records", "load_dataset", "open_records", "pick_bucket",
    "read_examples", "tokenize_example", "truncate", "write_records",
]
