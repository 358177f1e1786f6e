"""Test setup: CPU only, eight fake devices so sharding paths are exercised, and one persistent
JAX compilation cache for the whole run (xdist workers and the subprocesses of the resume
tests share it), so a program compiled once (the same train step in every ReST stage, the
same sampler in every run) is read back instead of compiled again."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# environment variables, not jax.config: subprocesses started by tests inherit them
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"jaxalign-tests-{os.getuid()}",
                                   "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
