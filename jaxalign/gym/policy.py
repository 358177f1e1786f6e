"""The reference policy: a tiny Llama trained by maximum likelihood on the gym's language.

    ref = reference_policy(ReferenceConfig(), cache_dir=None)   # trains once, then loads
    ref.model_cfg, ref.params, ref.tokenizer, ref.language, ref.metrics

Training goes through the shared loop (`jaxalign.train.trainer.train`) with the SFT objective
(`jaxalign.objectives.sft`) on JSONL written by the language and read back by
`jaxalign.data.load_dataset("sft", ...)`, as real data would be. The result is cached as a
Hugging Face checkpoint (plus tokenizer and `gym.json` with the held-out cross-entropy) under
`<cache_dir>/<hash of the config>`; `cache_dir` defaults to `$JAXALIGN_GYM_CACHE` or
`~/.cache/jaxalign/gym`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import jax
import numpy as np

from jaxalign.algorithms.runner import Mapped
from jaxalign.data import BatchIterator, load_dataset
from jaxalign.gym import language as lang_lib
from jaxalign.models import ModelConfig, completion_logprobs, init_params
from jaxalign.models.hf import load_hf, save_hf
from jaxalign.objectives import sft_objective, token_weight
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, train


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    language: lang_lib.LanguageConfig = lang_lib.LanguageConfig()
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    num_train: int = 16384  # sequences
    steps: int = 800
    batch_size: int = 64
    lr: float = 1e-2
    seed: int = 0

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            family="llama", vocab_size=64, hidden_size=self.hidden_size,
            num_layers=self.num_layers, num_heads=self.num_heads, num_kv_heads=self.num_heads,
            intermediate_size=self.intermediate_size, max_position_embeddings=64,
            bos_token_id=lang_lib.BOS, eos_token_id=lang_lib.EOS, pad_token_id=lang_lib.PAD)

    def digest(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclasses.dataclass
class Reference:
    model_cfg: ModelConfig
    params: dict
    tokenizer: object
    language: lang_lib.Language
    metrics: dict
    directory: str


def default_cache_dir() -> str:
    return os.environ.get("JAXALIGN_GYM_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "jaxalign", "gym"))


def write_sft_jsonl(path: str, language: lang_lib.Language, n: int, seed: int) -> str:
    prompts = language.sample_prompts(n, seed)
    completions = language.sample(prompts, seed + 1)
    with open(path, "w") as fh:
        for p, c in zip(prompts, completions):
            fh.write(json.dumps({"prompt": lang_lib.text(p),
                                 "completion": " " + lang_lib.text(c)}) + "\n")
    return path


def pack(prompts, completions, length: int = 32):
    """Right-padded tokens / mask / loss_mask [B, length] of prompt + completion."""
    B = len(prompts)
    tokens = np.full((B, length), lang_lib.PAD, np.int32)
    mask, loss_mask = np.zeros((B, length), bool), np.zeros((B, length), bool)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        seq = list(p) + list(c)
        tokens[b, :len(seq)] = seq
        mask[b, :len(seq)] = True
        loss_mask[b, len(p):len(seq)] = True
    return tokens, mask, loss_mask


def heldout_cross_entropy(model_cfg, params, language, n: int = 2048, seed: int = 10_000):
    """(policy CE, process NLL) in nats per completion token (EOS included) on n fresh samples."""
    prompts = language.sample_prompts(n, seed)
    completions = language.sample(prompts, seed + 1)
    fwd = jax.jit(lambda p, t, m, lm: completion_logprobs(model_cfg, p, t, m, lm).sum)
    total = 0.0
    for i in range(0, n, 256):
        t, m, lm = pack(prompts[i:i + 256], completions[i:i + 256])
        total += float(np.sum(jax.device_get(fwd(params, t, m, lm))))
    ntok = sum(len(c) for c in completions)
    return -total / ntok, float(-language.logprobs(prompts, completions).sum() / ntok)


def train_reference(cfg: ReferenceConfig, directory: str) -> dict:
    language = lang_lib.Language(cfg.language)
    tok = lang_lib.tokenizer()
    os.makedirs(directory, exist_ok=True)
    path = write_sft_jsonl(os.path.join(directory, "train.jsonl"), language, cfg.num_train,
                           cfg.seed)
    ds, _ = load_dataset("sft", path, tok, max_length=32, max_prompt_length=8)
    it = Mapped(BatchIterator(ds, batch_size=cfg.batch_size, seed=cfg.seed), token_weight)
    model_cfg = cfg.model_config()
    params = init_params(model_cfg, jax.random.key(cfg.seed))
    optimizer, _ = make_optimizer(optimizer="adamw", lr=cfg.lr, warmup_steps=cfg.steps // 20,
                                  decay="cosine", total_steps=cfg.steps, grad_clip=1.0)
    loop = LoopConfig(workdir=os.path.join(directory, "run"), total_steps=cfg.steps,
                      seed=cfg.seed, log_every=50, checkpoint_every=cfg.steps,
                      keep_checkpoints=1, async_checkpoints=False, progress_bar=False)
    t0 = time.perf_counter()
    state = train(loop, objective=sft_objective(model_cfg), optimizer=optimizer, params=params,
                  model_cfg=model_cfg, train_iter=it)
    seconds = time.perf_counter() - t0
    ce, nll = heldout_cross_entropy(model_cfg, state.params, language)
    save_hf(directory, model_cfg, state.params)
    tok.save_pretrained(directory)
    metrics = dict(heldout_ce=ce, process_nll=nll, train_seconds=seconds, steps=cfg.steps)
    with open(os.path.join(directory, "gym.json"), "w") as fh:
        json.dump(dict(config=dataclasses.asdict(cfg), metrics=metrics), fh, indent=1)
    shutil.rmtree(loop.workdir, ignore_errors=True)
    return metrics


def reference_policy(cfg: ReferenceConfig = ReferenceConfig(),
                     cache_dir: str | None = None) -> Reference:
    """Loads `<cache_dir>/<cfg.digest()>`, training and writing it first if it is missing."""
    directory = os.path.join(cache_dir or default_cache_dir(), cfg.digest())
    if not os.path.exists(os.path.join(directory, "gym.json")):
        tmp = f"{directory}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        train_reference(cfg, tmp)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    with open(os.path.join(directory, "gym.json")) as fh:
        metrics = json.load(fh)["metrics"]
    model_cfg, params = load_hf(directory)
    model_cfg = model_cfg.replace(bos_token_id=lang_lib.BOS, eos_token_id=lang_lib.EOS,
                                  pad_token_id=lang_lib.PAD)
    return Reference(model_cfg, params, lang_lib.tokenizer(),
                     lang_lib.Language(cfg.language), metrics, directory)
