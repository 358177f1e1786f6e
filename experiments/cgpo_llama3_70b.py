r"""CGPO (Xu et al. 2024, arXiv 2409.20370) on Llama-3-70B: the paper's five tasks (general
chat, instruction following, math/code, engagement, harmful intent), three reward models
(helpfulness, engagement, safety) and the mixture of judges, 600 steps at global batch 1024.

Validate shapes and memory without running (any machine, nothing allocated, reads no prompt
file, about 15 s on 2 CPU cores):
    python -m jaxalign --config experiments/cgpo_llama3_70b.py --dry_run
    python -m jaxalign --config experiments/cgpo_llama3_70b.py:crraft --dry_run
Run, on every host of the slice (tpu_setup/launch.sh does it; each process samples, scores and
judges its share of every task's prompts; checkpoints, tokenizers and prompt files on a bucket
or a shared filesystem; every path below is a placeholder to fill):
    python -m jaxalign --config experiments/cgpo_llama3_70b.py \
        --config.model.hf_path=/ckpt/llama3-70b-dpo --config.tokenizer=/ckpt/llama3-70b-dpo \
        --config.reward_models.helpfulness.hf_path=/ckpt/rm-helpfulness \
        --config.reward_models.engagement.hf_path=/ckpt/rm-engagement \
        --config.reward_models.safety.hf_path=/ckpt/rm-safety \
        --config.judge_models.false_refusal_8b.hf_path=/ckpt/false-refusal-8b \
        --config.judge_models.factuality_70b.hf_path=/ckpt/Meta-Llama-3-70B-Instruct \
        --config.judge_models.llamaguard2_8b.hf_path=/ckpt/Meta-Llama-Guard-2-8B \
        --config.tasks.general_chat.prompts=/data/cgpo/general_chat.jsonl \
        ... (one `prompts` file per task) --workdir /runs/cgpo_llama3_70b
Arguments: "" mixes optimizers per task (below); "crpg", "crraft", "codpo" put every task on
one optimizer, as the columns of the paper's Table 2 do; "smoke" is experiments/cgpo_toy.py's
smoke config (the plumbing on random tiny models).

Tasks (prompt file rows: {"prompt"} or {"messages"}, plus the judges' metadata fields):
  task                   reward model  judges                               optimizer  K  KL_max
  general_chat           helpfulness   false refusal, factuality ("answer")  CRPG       4   3
  instruction_following  helpfulness   false refusal, IF string rules        CRRAFT     8  10
                                       ("instructions" or IFEval's instruction_id_list/kwargs)
  math                   helpfulness   false refusal, math ("answer")        CRRAFT     8  10
  code                   helpfulness   false refusal, code unit tests        CRRAFT     8  10
                                       ("tests", "entry_point")
  engagement             engagement    false refusal                         CRPG       4   3
  harmful_intent         safety        safety (LlamaGuard2)                  CRPG       4   3
The paper's math/code task is two prompt files here (math and code) sharing its settings:
the math judge needs each row's answer and the code judge its unit tests, so a row can feed
only one of them. Factuality is judged on the general chat task (the paper's factuality
prompts, TriviaQA/ARC, carry a ground truth): its rows need "answer"; drop the judge for
chat prompts without one.

Models (presets sized; a real run reads each hf_path's config.json and weights): the policy
Llama-3-70B (the paper's start is its DPO warm-up, 3,000 steps; ours is whatever checkpoint
`model.hf_path` names), float32 params and bf16 compute, full remat; the reference is the
starting policy. Reward models: the paper does not give their size (REFERENCE.md); ours are
Llama-3-70B-sized scalar reward models (`llama-3-70b` preset + score head, bf16). LLM judges
(bf16): false refusal the paper's fine-tuned 8B classifier (a Llama-3-8B causal LM here, read
through `false_refusal_judge`), factuality a 70B model given the ground truth
(`llama-3-70b`), safety LlamaGuard2 (Meta-Llama-Guard-2-8B has Llama-3-8B's shapes). Rule
judges (instructions, math, code) hold no weights.

From the paper: five tasks, three reward models, the judges above, CRPG / CRRAFT / CODPO,
lenient KL and more samples for tasks with precise judges (IF, math, code), strict KL and
fewer samples for general chat, 600 steps, global batch 1024. Ours (the paper gives none):
KL_max (3 strict, 10 lenient: sequence log-ratio in nats), K (4 strict, 8 lenient), the
per-task prompts_per_step, rho = 1 for every task, CODPO's beta 0.1 and lambda 5.0 (TRL PR
#2190), AdamW at lr 5e-7 (constant after 20 warm-up steps, grad clip 1.0), temperature 1.0,
lengths (prompts up to 1024 tokens, 1024 new, rows of 2048), the optimizer per task in the
default mix. Global batch: we define it as the sum over tasks of prompts_per_step * K rows
per update, 1024 = 256 (chat 64 x 4) + 256 (IF 32 x 8) + 128 (math 16 x 8) + 128 (code 16 x
8) + 128 (engagement 32 x 4) + 128 (harmful 32 x 4); CRRAFT also trains a_bar's row per
prompt (its fallback a*), so the default mix's train step has 1088 rows (64 more), padded to
the data-parallel size.

Dry run (`--dry_run`, default arg): resident models (parameters) policy (trained) and
reference 70,553,706,496 each; reward models helpfulness, engagement, safety 69,503,041,536
each (the backbone without LM head, plus the score head); LLM judges false_refusal_8b and
llamaguard2_8b 8,030,261,248 each, factuality_70b 70,553,706,496. GiB per device, fsdp over
all chips, 95 GiB HBM per chip ("fits": under 90% of it); "other" = the 3 reward models and
3 LLM judges (the printed table lists each); the train step's 1088 rows padded to the chips
x 4 micro-batches (`cgpo.micro_batches`, gradient accumulation):
  slice (chips)    phase     params  ref  optim  grads  activations  KV cache  other  total  fits
  v5p-128 (64)     training    4.11  4.11  8.21  4.11        29.90      0.00   8.59  59.03  yes
                   sampling    4.11  4.11  8.21  0.00         0.00      5.00   8.59  30.01  yes
  v5p-256 (128)    training    2.05  2.05  4.11  2.05        17.94      0.00   4.29  32.50  yes
                   sampling    2.05  2.05  4.11  0.00         0.00      5.00   4.29  17.51  yes
  v5p-512 (256)    training    1.03  1.03  2.05  1.03        11.96      0.00   2.15  19.24  yes
                   sampling    1.03  1.03  2.05  0.00         0.00      5.00   2.15  11.25  yes
  v5p-1024 (512)   training    0.51  0.51  1.03  0.51         5.98      0.00   1.07   9.62  yes
                   sampling    0.51  0.51  1.03  0.00         0.00      5.00   1.07   8.12  yes
The Trainer (optimizer state too) lives while the loop samples, so sampling counts it. The
KV cache stays 5 GiB from 64 chips up: the sampler puts at least one prompt row (x K = 8) on
each chip. With one micro-batch v5p-128 would need 101.67 GiB of activations (130.79 in all:
does not fit). Not counted: the reward models' and judges' forward
activations and the log-prob forward of a step's rows (transient, smaller than the step's).
Runtime and numbers of the full run: not measured.
"""

import ml_collections

from experiments import check_arg

OPTIMIZERS = ("crpg", "crraft", "codpo")


def get_config(arg: str = ""):
    check_arg(arg, ("", *OPTIMIZERS, "smoke"), __file__)
    if arg == "smoke":
        from experiments import cgpo_toy
        c = cgpo_toy.get_config("smoke")
        c.workdir = "results/cgpo_llama3_70b_smoke"
        return c
    c = ml_collections.ConfigDict()
    c.algorithm = "cgpo"
    c.workdir = f"results/cgpo_llama3_70b{'_' + arg if arg else ''}"
    c.seed = 0
    c.tokenizer = ""  # a local tokenizer directory, usually the policy checkpoint's
    c.model = ml_collections.ConfigDict(dict(
        preset="llama-3-70b", hf_path="", dtype="bfloat16", param_dtype="float32",
        remat="full", scan_layers=True))
    frozen = dict(hf_path="", tokenizer="", dtype="bfloat16", param_dtype="bfloat16",
                  remat="none", scan_layers=True)
    rm = dict(frozen, preset="llama-3-70b", max_length=2048, max_prompt_length=1024,
              batch_size=64)
    c.reward_models = ml_collections.ConfigDict(dict(helpfulness=rm, engagement=rm, safety=rm))
    c.judge_models = ml_collections.ConfigDict(dict(
        false_refusal_8b=dict(frozen, preset="llama-3-8b"),
        factuality_70b=dict(frozen, preset="llama-3-70b"),
        llamaguard2_8b=dict(frozen, preset="llama-3-8b")))
    llm = dict(max_length=3072, batch_size=64)  # the judge prompt: template + prompt + response
    false_refusal = dict(llm, kind="false_refusal", model="false_refusal_8b")
    strict = dict(samples=4, kl_max=3.0)
    lenient = dict(samples=8, kl_max=10.0)
    tasks = dict(
        general_chat=dict(strict, reward="helpfulness", optimizer="crpg", prompts_per_step=64,
                          judges=dict(false_refusal=false_refusal, factuality=dict(
                              llm, kind="factuality", model="factuality_70b"))),
        instruction_following=dict(
            lenient, reward="helpfulness", optimizer="crraft", prompts_per_step=32,
            judges=dict(false_refusal=false_refusal, instructions=dict(kind="instructions"))),
        math=dict(lenient, reward="helpfulness", optimizer="crraft", prompts_per_step=16,
                  judges=dict(false_refusal=false_refusal, math=dict(kind="math"))),
        code=dict(lenient, reward="helpfulness", optimizer="crraft", prompts_per_step=16,
                  judges=dict(false_refusal=false_refusal, code=dict(kind="code", workers=16))),
        engagement=dict(strict, reward="engagement", optimizer="crpg", prompts_per_step=32,
                        judges=dict(false_refusal=false_refusal)),
        harmful_intent=dict(strict, reward="safety", optimizer="crpg", prompts_per_step=32,
                            judges=dict(safety=dict(llm, kind="safety", model="llamaguard2_8b"))),
    )
    for t in tasks.values():
        t.update(prompts="", rho=1.0, beta=0.1, lambda_=5.0, baseline="reference")
        if arg:
            t["optimizer"] = arg
    c.tasks = ml_collections.ConfigDict(tasks)
    c.data = ml_collections.ConfigDict(dict(toy_prompts=0, max_length=2048,
                                            max_prompt_length=1024, chat=True, on_error="skip"))
    c.cgpo = ml_collections.ConfigDict(dict(
        steps=600, max_new_tokens=1024, temperature=1.0, top_p=1.0, checkpoint_every=50,
        sample_batch=64, micro_batches=4))
    c.optim = ml_collections.ConfigDict(dict(optimizer="adamw", lr=5e-7, warmup_steps=20,
                                             decay="constant", grad_clip=1.0))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, model=1))
    # TPU slices the dry run sizes (jaxalign.models.slices: v5p-128 is 64 chips of 95 GiB,
    # v5p-256 128, v5p-512 256, v5p-1024 512; fsdp over all chips)
    c.dry_run_meshes = {"v5p-128": "v5p-128", "v5p-256": "v5p-256", "v5p-512": "v5p-512",
                        "v5p-1024": "v5p-1024"}
    return c
