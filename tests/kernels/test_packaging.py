"""kernels/ (top of the repository) installs as `jaxalign.kernels`: the package list is the tree,
and a built wheel installed outside the checkout imports the kernels from itself.

    .venv/bin/python -m pytest -q tests/kernels/test_packaging.py
"""

import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tree_packages() -> set[str]:
    found = {"jaxalign.kernels"}
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "jaxalign")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        if any(f.endswith(".py") for f in filenames):
            found.add(os.path.relpath(dirpath, ROOT).replace(os.sep, "."))
    return found


def test_pyproject_lists_every_package_and_maps_kernels():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        tool = tomllib.load(fh)["tool"]["setuptools"]
    assert set(tool["packages"]) == _tree_packages()
    assert tool["package-dir"] == {"jaxalign.kernels": "kernels"}


def test_wheel_installs_kernels_under_jaxalign_and_imports_them_from_there(tmp_path):
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("jaxalign", "kernels"):
        shutil.copytree(os.path.join(ROOT, name), source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("jaxalign-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"jaxalign"}  # no top-level `kernels` to shadow PyPI's (or be shadowed)
    assert "jaxalign/kernels/logprobs.py" in names
    assert "jaxalign/kernels/decode_attention.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    # -S: no site-packages processing, so the checkout's editable install cannot answer; jax
    # comes from the environment's site-packages, placed after the installed copy.
    code = ("import jax.numpy as jnp, jaxalign.kernels as k, jaxalign.kernels.logprobs as lp, "
            "jaxalign.kernels.decode_attention as da; "
            "print(k.__file__); print(lp.__file__); print(da.__file__); "
            "h = jnp.ones((1, 3, 4)); w = jnp.ones((4, 5)); t = jnp.zeros((1, 3), jnp.int32); "
            "print(float(lp.token_logprobs(h, w, t).sum()))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target),
                                                        sysconfig.get_paths()["purelib"],
                                                        sysconfig.get_paths()["platlib"]])}
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    assert all(line.startswith(str(target / "jaxalign" / "kernels")) for line in lines[:3]), lines
    assert abs(float(lines[3]) + 3 * math.log(5)) < 1e-5  # uniform logits over V = 5
