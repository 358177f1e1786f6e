import os

from jaxalign.gym.policy import ReferenceConfig, reference_policy


def test_reference_learns_the_language(ref):
    ce, nll = ref.metrics["heldout_ce"], ref.metrics["process_nll"]
    print(f"\nreference held-out CE {ce:.4f} vs process NLL {nll:.4f} nats/token "
          f"(trained in {ref.metrics['train_seconds']:.0f} s)")
    assert ce >= nll - 0.01  # no model beats the process itself (up to sampling noise)
    assert ce - nll < 0.05


def test_reference_is_cached_by_config_hash(ref, ref_cache):
    stamp = os.path.getmtime(os.path.join(ref.directory, "gym.json"))
    again = reference_policy(ReferenceConfig(), cache_dir=ref_cache)
    assert again.directory == ref.directory
    assert os.path.getmtime(os.path.join(ref.directory, "gym.json")) == stamp
    assert ReferenceConfig(steps=1).digest() != ReferenceConfig().digest()
