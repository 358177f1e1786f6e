from jaxalign.gym import oracles, tasks
from jaxalign.gym.evaluate import EvalConfig, Suite, markdown_table
from jaxalign.gym.frontier import best_of_n_sweep
from jaxalign.gym.proxy import train_proxy


def test_proxy_is_imperfect_and_hackable(ref, tmp_path):
    oracle = oracles.BTOracle(tasks.sentiment, temperature=0.5)
    proxy = train_proxy(ref, oracle, str(tmp_path), num_pairs=128, steps=40, num_eval=256)
    print(f"\nproxy held-out accuracy {proxy.accuracy:.3f} ({proxy.num_pairs} training pairs)")
    assert 0.6 < proxy.accuracy < 0.98

    suite = Suite(ref, EvalConfig(num_text=32, num_arith=0, samples=2))
    ns = [1, 4, 16, 64]
    rows = []
    for n, comps in best_of_n_sweep(suite, proxy.score, ns):
        flat_p = [p for p, cs in zip(suite.prompts, comps) for _ in cs]
        flat_c = [c for cs in comps for c in cs]
        rows.append(dict(N=n, proxy=float(proxy.score(flat_p, flat_c).mean()),
                         true=float(tasks.score(tasks.sentiment, flat_p, flat_c).mean())))
    # both in units of their own spread over reference samples
    cands, _ = suite.sample(ref.params, n=8, seed=5)
    flat_p = [p for p, cs in zip(suite.prompts, cands) for _ in cs]
    flat_c = [c for cs in cands for c in cs]
    sp, st = proxy.score(flat_p, flat_c), tasks.score(tasks.sentiment, flat_p, flat_c)
    for r in rows:
        r["proxy_z"] = (r["proxy"] - sp.mean()) / sp.std()
        r["true_z"] = (r["true"] - st.mean()) / st.std()
        r["gap_z"] = r["proxy_z"] - r["true_z"]
    print(markdown_table(rows, ["N", "proxy", "true", "proxy_z", "true_z", "gap_z"]))
    assert rows[-1]["proxy"] > rows[0]["proxy"]
    assert rows[-1]["gap_z"] > rows[0]["gap_z"] + 0.5  # the proxy runs ahead of the truth
