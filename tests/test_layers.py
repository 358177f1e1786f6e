"""Import layers: every module of jaxalign imports only its own package and the layers below.

    .venv/bin/python -m pytest tests/test_layers.py -q

`check_layers(root)` parses (with `ast`, nothing is imported) every module under
`root/jaxalign`, collects each `import x` and `from x import y` (module-level and inside
functions; relative imports resolved) and reports any import that goes up the layers, one
within a layer between different packages, one a rule forbids, and any module it cannot place.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import sys
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Rule(NamedTuple):
    layer: int
    never: tuple[str, ...] = ()  # lower modules it must not import (globs, relative to jaxalign/)
    also: tuple[str, ...] = ()  # units of its own layer it may import


# unit (a package folder or a top-level module of jaxalign/) -> its rule. Bottom to top:
# -1  the base: io.py (atomic and committed files, the workdir lock), checksum.py and kernels
#     (the repository's top-level kernels/ folder, installed as jaxalign.kernels: Pallas kernels
#     and their references, importing only jax); they import nothing of ours, and every unit
#     may import them (data/toy.py writes atomically, models attend with the kernels).
#  0  leaves: pure array functions (losses), data, meshes, the multi-process setup
#     (distributed.py), I/O helpers; no model in sight.
#  1  models: Flax modules and HF weights; know nothing of training or preferences.
#  2  sampling (decoding) and train (step, optimizer, checkpoints): two consumers of a model
#     that never meet, so a sampler change cannot break training and the reverse.
#  3  reward: reward models, ARMs, judges; ARGS decodes with a reward model, so it sits above
#     sampling; it scores, it never trains (no `train`).
#  4  objectives: (params, batch, rng) -> (loss_B, weight_B, metrics); above reward because
#     the Bradley-Terry objective reads the reward model; pure functions of a batch, so no
#     decoding (`sampling`) and no loop (`train`).
#  5  algorithms: runners and loops that compose objectives, train, sampling and data.
#  6  gym: synthetic experiments built from the loops (never from a runner's config plumbing).
#  7  the entry point and the demo: nothing imports them.
RULES = {
    "io.py": Rule(-1), "checksum.py": Rule(-1), "kernels": Rule(-1),
    "__init__.py": Rule(0), "data": Rule(0), "losses": Rule(0), "sharding.py": Rule(0),
    "distributed.py": Rule(0, also=("sharding.py",)),
    "models": Rule(1),
    "sampling": Rule(2), "train": Rule(2),
    "reward": Rule(3, never=("train/*",)),
    "objectives": Rule(4, never=("sampling/*", "train/*")),
    "algorithms": Rule(5),
    "gym": Rule(6, never=("algorithms/run_*.py",)),
    "main.py": Rule(7), "__main__.py": Rule(7, also=("main.py",)), "demo.py": Rule(7),
}
RUNNERS = ("algorithms/run_*.py", "main.py", "__main__.py")
OUTSIDE = ("experiments", "tests", "benchmarks")  # above the library: never imported by it
ELSEWHERE = {"kernels": "kernels"}  # units of jaxalign that live at the repository top (root/...)


def _source(lib: str, path: str) -> str:
    """The file of `path` (relative to jaxalign/): "kernels/x.py" -> root/kernels/x.py."""
    head, _, rest = path.partition("/")
    if head in ELSEWHERE:
        return os.path.join(os.path.dirname(lib), ELSEWHERE[head], rest)
    return os.path.join(lib, path)


def unit_of(path: str) -> str | None:
    """The RULES key of a path relative to jaxalign/ ("reward/arm.py" -> "reward"), or None."""
    head = path.split("/", 1)[0]
    return head if head in RULES else None


def _module_path(lib: str, dotted: str) -> str | None:
    """"jaxalign.reward.arm" -> "reward/arm.py" (a package -> its __init__.py), None if absent."""
    rel = dotted.split(".")[1:]
    base = _source(lib, "/".join(rel))
    if os.path.isdir(base):
        return "/".join(rel + ["__init__.py"])
    if os.path.isfile(base + ".py"):
        return "/".join(rel) + ".py"
    return None


def imports_of(lib: str, path: str) -> list[tuple[int, str]]:
    """[(line, dotted module)] that the module at `path` (relative to `lib`) imports, with
    `from pkg import sub` read as importing the submodule pkg.sub when there is one."""
    with open(_source(lib, path)) as fh:
        tree = ast.parse(fh.read(), path)
    package = ["jaxalign"] + path.split("/")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for a in node.names:
                sub = f"{module}.{a.name}"
                is_sub = module.startswith("jaxalign") and _module_path(lib, sub)
                out.append((node.lineno, sub if is_sub else module))
    return out


def _library_files(root: str) -> list[str]:
    """Every module of jaxalign, relative to jaxalign/ (those of ELSEWHERE included)."""
    lib = os.path.join(root, "jaxalign")
    tops = [(lib, "")] + [(os.path.join(root, folder), unit + "/")
                          for unit, folder in ELSEWHERE.items()]
    paths = []
    for top, prefix in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(f for f in filenames if f.endswith(".py")):
                rel = os.path.relpath(os.path.join(dirpath, name), top).replace(os.sep, "/")
                paths.append(prefix + rel)
    return paths


def check_layers(root: str) -> list[str]:
    """Every violation in `root/jaxalign` as "file:line: message" ([] when the layers hold)."""
    lib = os.path.join(root, "jaxalign")
    problems = []
    for path in _library_files(root):
        unit = unit_of(path)
        if unit is None:
            problems.append(f"jaxalign/{path}: cannot place it in a layer (add it to RULES)")
            continue
        rule = RULES[unit]
        for line, module in imports_of(lib, path):
            where = f"jaxalign/{path}:{line}: imports {module}"
            top = module.split(".")[0]
            if top in OUTSIDE:
                problems.append(f"{where}: {top}/ sits above the library")
            if top != "jaxalign" or module == "jaxalign":
                continue
            target = _module_path(lib, module)
            target_unit = unit_of(target) if target else None
            if target_unit is None:
                problems.append(f"{where}: cannot place the imported module")
                continue
            if target_unit == unit or target_unit == "__init__.py":
                continue
            layer = RULES[target_unit].layer
            if any(fnmatch.fnmatch(target, g) for g in rule.never):
                problems.append(f"{where}: {unit} must never import {target}")
            elif layer > rule.layer:
                problems.append(f"{where}: layer {rule.layer} ({unit}) imports layer "
                                f"{layer} ({target_unit}), above it")
            elif layer == rule.layer and target_unit not in rule.also:
                problems.append(f"{where}: {unit} and {target_unit} share layer {layer} "
                                f"and must not import each other")
    return problems


def test_jaxalign_imports_only_downward():
    problems = check_layers(ROOT)
    assert not problems, "\n".join(problems)


def test_kernels_import_only_jax_numpy_and_the_standard_library():
    """kernels/ must run where only jax is installed (the GPU image lacks flax and friends)."""
    lib = os.path.join(ROOT, "jaxalign")
    allowed = {"jax", "numpy", "jaxalign", "__future__"} | set(sys.stdlib_module_names)
    found = [f"kernels/{path}:{line}: {module}"
             for path in _library_files(ROOT) if path.startswith("kernels/")
             for line, module in imports_of(lib, path)
             if module.split(".")[0] not in allowed
             or (module.startswith("jaxalign") and not module.startswith("jaxalign.kernels"))]
    assert [p for p in _library_files(ROOT) if p.startswith("kernels/")], "no kernels/ found"
    assert not found, found


def test_gym_and_reward_import_no_runner():
    lib = os.path.join(ROOT, "jaxalign")
    found = []
    for package in ("gym", "reward"):
        for name in sorted(os.listdir(os.path.join(lib, package))):
            if name.endswith(".py"):
                for line, module in imports_of(lib, f"{package}/{name}"):
                    target = _module_path(lib, module) if module.startswith("jaxalign.") else None
                    if target and any(fnmatch.fnmatch(target, g) for g in RUNNERS):
                        found.append(f"jaxalign/{package}/{name}:{line}: {module}")
    assert not found, found


def _write(root, path, text=""):
    full = root / "jaxalign" / path
    full.parent.mkdir(parents=True, exist_ok=True)
    full.write_text(text)


def test_checker_reports_violations(tmp_path):
    _write(tmp_path, "__init__.py")
    for package in ("models", "algorithms", "reward", "gym", "train", "sampling"):
        _write(tmp_path, f"{package}/__init__.py")
    _write(tmp_path, "algorithms/y.py")
    _write(tmp_path, "algorithms/run_x.py")
    _write(tmp_path, "train/step.py")
    _write(tmp_path, "models/x.py", "import numpy\n\n\ndef f():\n"
                                    "    from jaxalign.algorithms import y\n    return y\n")
    _write(tmp_path, "models/ok.py", "from jaxalign import models\nfrom . import x\n")
    _write(tmp_path, "reward/r.py", "from ..train import step\n")
    _write(tmp_path, "gym/g.py", "from jaxalign.algorithms.run_x import run\n")
    _write(tmp_path, "sampling/s.py", "import jaxalign.train.step\n")
    _write(tmp_path, "mystery.py")
    problems = check_layers(str(tmp_path))
    assert len(problems) == 5, "\n".join(problems)
    text = "\n".join(problems)
    assert ("jaxalign/models/x.py:5: imports jaxalign.algorithms.y: layer 1 (models) imports "
            "layer 5 (algorithms), above it") in text
    assert "jaxalign/mystery.py: cannot place it in a layer" in text
    assert "jaxalign/reward/r.py:1: imports jaxalign.train.step: reward must never import" in text
    assert "jaxalign/gym/g.py:1: imports jaxalign.algorithms.run_x: gym must never import" in text
    assert "sampling and train share layer 2" in text
    assert "models/ok.py" not in text


def test_io_and_checksum_sit_below_layer_zero(tmp_path):
    _write(tmp_path, "__init__.py")
    _write(tmp_path, "data/__init__.py")
    _write(tmp_path, "data/toy.py", "from jaxalign import io\n")  # a layer-0 unit writes files
    _write(tmp_path, "losses/__init__.py", "from jaxalign import data\n")  # layer 0 peers: no
    _write(tmp_path, "io.py", "from jaxalign import checksum\n")
    _write(tmp_path, "checksum.py", "from jaxalign.data import toy\n")
    problems = check_layers(str(tmp_path))
    assert problems == [
        "jaxalign/checksum.py:1: imports jaxalign.data.toy: layer -1 (checksum.py) imports "
        "layer 0 (data), above it",
        "jaxalign/io.py:1: imports jaxalign.checksum: io.py and checksum.py share layer -1 and "
        "must not import each other",
        "jaxalign/losses/__init__.py:1: imports jaxalign.data: losses and data share layer 0 and "
        "must not import each other"], "\n".join(problems)


def test_kernels_at_the_top_are_checked_as_the_base_layer(tmp_path):
    _write(tmp_path, "__init__.py")
    _write(tmp_path, "losses/__init__.py", "from jaxalign.kernels import ops\n")  # allowed
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "kernels" / "ops.py").write_text("from . import _base\nfrom jaxalign import losses\n")
    (tmp_path / "kernels" / "_base.py").write_text("import jax\n")
    problems = check_layers(str(tmp_path))
    assert problems == [
        "jaxalign/kernels/ops.py:2: imports jaxalign.losses: layer -1 (kernels) imports layer 0 "
        "(losses), above it"], "\n".join(problems)
