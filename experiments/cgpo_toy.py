r"""CGPO from files on the toy prompts: two tasks, each with its own reward model, judges and
optimizer (a plumbing check of `config.algorithm = "cgpo"`; random models teach nothing).

    python -m jaxalign --config experiments/cgpo_toy.py:smoke --workdir /tmp/cgpo_smoke
    python -m jaxalign --config experiments/cgpo_toy.py:smoke --dry_run

`smoke`: a random 2-layer policy, two random reward models ("helpful", "engaging") and a
random 2-layer LLM-judge model, on the toy prompts dealt round-robin over the two toy=True
tasks (run_cgpo's toy rule: "chat" gets rows 0, 2, 4, ..., "words" rows 1, 3, 5, ...; each row's
metadata holds the last word of its preferred toy completion as `answer` and an instruction
to include that word as `instructions`; a_bar is one sample of the reference). "chat": CRPG,
2 samples, a safety LLM judge reading p("good") vs p("bad"). "words": CRRAFT, 2 samples, a
regex final-word judge and an instruction judge. 2 steps, about 30 s on 2 idle CPU cores (XLA
compiles dominate). The default config is the same with 100 steps.
"""

import ml_collections

from experiments import check_arg


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"), __file__)
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.algorithm = "cgpo"
    c.workdir = "results/cgpo_toy"
    c.seed = 0
    c.tokenizer = "toy"
    tiny = dict(preset="bench-tiny", hf_path="", vocab_size=64, initializer_range=0.02,
                dtype="float32", param_dtype="float32", remat="none", scan_layers=True)
    c.model = ml_collections.ConfigDict(tiny)
    reward = dict(tiny, tokenizer="", max_length=32, max_prompt_length=16, batch_size=16)
    c.reward_models = ml_collections.ConfigDict(dict(helpful=reward, engaging=reward))
    c.judge_models = ml_collections.ConfigDict(dict(tiny_judge=dict(tiny, tokenizer="")))
    c.tasks = ml_collections.ConfigDict(dict(
        chat=dict(toy=True, reward="helpful", optimizer="crpg", samples=2, prompts_per_step=4,
                  kl_max=5.0, judges=dict(safe=dict(
                      kind="safety", model="tiny_judge", positive="good", negative="bad",
                      template="{prompt} {response} good or bad", max_length=64,
                      batch_size=16, threshold=0.42))),  # the random judge's p sits near 0.4
        words=dict(toy=True, reward="engaging", optimizer="crraft", samples=2,
                   prompts_per_step=4, kl_max=10.0, judges=dict(
                       final_word=dict(kind="regex", pattern=r"(\w+)\W*$"),
                       includes=dict(kind="instructions")))))
    c.data = ml_collections.ConfigDict(dict(toy_prompts=32, max_length=32, max_prompt_length=16,
                                            chat=False, on_error="raise"))
    c.cgpo = ml_collections.ConfigDict(dict(
        steps=2 if smoke else 100, max_new_tokens=8, temperature=1.0, top_p=1.0,
        checkpoint_every=2 if smoke else 20, sample_batch=16))
    c.optim = ml_collections.ConfigDict(dict(optimizer="adamw", lr=1e-3, warmup_steps=0,
                                             decay="constant", grad_clip=1.0))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    c.dry_run_meshes = {"cpu": dict(data=1, fsdp=1, model=1)}
    return c
