"""Tiny tokenizers and random Hugging Face checkpoints built offline, for the sampling tests.

The tokenizer is a WordLevel vocabulary of a few dozen words (TOKENIZER_SIZE = 39) while the
models' embedding tables have VOCAB = 64 rows: ids 39..63 are "padded vocabulary", never sampled.
Weights use initializer_range=0.3 so logits are far from uniform (greedy steps are decisive).
"""

from __future__ import annotations

import json
import os

import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

SPECIALS = ["<pad>", "<s>", "</s>", "<eot>", "<unk>"]  # ids 0..4; </s> and <eot> both stop
WORDS = ("the a cat dog sat on mat ran fast slow big small red blue green one two three four "
         "five is was and or but hello world how are you fine thank me tell").split()
VOCAB = 64
TOKENIZER_SIZE = len(SPECIALS) + len(WORDS)
PAD, BOS, EOS, EOT = 0, 1, 2, 3


def make_tokenizer() -> T.PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tk.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                      special_tokens=[("<s>", BOS)])
    return T.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                     pad_token="<pad>", unk_token="<unk>")


def make_hf_model(family: str, seed: int = 0, eos=EOS, **kw):
    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                           initializer_range=0.3, bos_token_id=BOS, eos_token_id=eos,
                           pad_token_id=PAD, **kw)
        return T.GPT2LMHeadModel(cfg).eval()
    cfg = T.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                        initializer_range=0.3, max_position_embeddings=64, bos_token_id=BOS,
                        eos_token_id=eos, pad_token_id=PAD, **kw)
    return T.LlamaForCausalLM(cfg).eval()


def save_checkpoint(directory: str, family: str = "llama", seed: int = 0,
                    stop_ids: list[int] | None = None) -> str:
    """A HF checkpoint dir with the tiny tokenizer; generation_config.json lists `stop_ids`."""
    make_hf_model(family, seed).save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    if stop_ids is not None:
        with open(os.path.join(directory, "generation_config.json"), "w") as fh:
            json.dump({"bos_token_id": BOS, "eos_token_id": stop_ids, "pad_token_id": PAD}, fh)
    return directory


def hf_greedy(model, prompts, new: int, pad: int = PAD):
    """Left-padded batch through HF `generate` (greedy, no stop id): (new tokens [B, new],
    raw logits [B, new, V] float32)."""
    P = max(map(len, prompts))
    ids = torch.full((len(prompts), P), pad)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p)
        mask[i, P - len(p):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                             do_sample=False, pad_token_id=pad, eos_token_id=None,
                             return_dict_in_generate=True, output_logits=True)
    return out.sequences[:, P:].numpy(), torch.stack(out.logits, 1).float().numpy()
