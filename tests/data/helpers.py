"""Tiny tokenizers built offline (byte-level BPE trained on a few sentences) and file helpers."""

import json

import numpy as np

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from jaxalign.data import TokenizedDataset

CORPUS = [
    "Hello world, how are you? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "What is two plus two? It is four. What is the capital of France? Paris.",
    "\n\nHuman: hi there, can you help me?\n\nAssistant: Hello! Yes, how can I help?",
    "Write a short poem about the sea. The sea is blue and wide.",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]

# Zephyr-like: the template emits BOS itself and a newline after the assistant's EOS.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def make_tokenizer(chat: bool) -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    # Like Llama: add_special_tokens=True prepends BOS (so a chat template's BOS could double).
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>",
                                   chat_template=CHAT_TEMPLATE if chat else None)


def write_jsonl(path, rows) -> str:
    """Rows are dicts (dumped as JSON), str (written as is) or bytes (raw line)."""
    with open(path, "wb") as f:
        for row in rows:
            if isinstance(row, dict):
                row = json.dumps(row)
            f.write((row.encode("utf-8") if isinstance(row, str) else row) + b"\n")
    return str(path)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def make_dataset(n=37, kind="preference", max_length=256, seed=0):
    """Random token records (no tokenizer): prompts of 1-99 tokens, completions of 1-149."""
    rng = np.random.default_rng(seed)

    def ids(lo, hi):
        return rng.integers(3, 300, rng.integers(lo, hi)).astype(np.int32)

    if kind == "preference":
        records = [{"prompt": ids(1, 100), "chosen": ids(1, 150), "rejected": ids(1, 150)}
                   for _ in range(n)]
    else:
        records = [{"prompt": ids(1, 100), "completion": ids(1, 150)} for _ in range(n)]
    return TokenizedDataset(kind=kind, records=records, pad_id=0, max_length=max_length,
                            locations=[f"synthetic:{i + 1}" for i in range(n)])


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b, dtypes: bool = False):
    """Equal batches, key by key (and dtype by dtype with `dtypes`)."""
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for k in a:
            if dtypes:
                assert a[k].dtype == b[k].dtype, k
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
