"""jaxalign: JAX-native alignment of language models (DPO family, SPPO, ReST, CGPO, GenARM)."""

import importlib.abc
import importlib.util
import os
import sys

__version__ = "0.1.0"

_HERE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_HERE)


class _CheckoutKernels(importlib.abc.MetaPathFinder):
    """`jaxalign.kernels` from a checkout that is not installed (e.g. `PYTHONPATH=.`): the
    repository's top-level kernels/ folder. Installed (wheel or editable), setuptools places
    it (pyproject.toml's package-dir) and this finder is never registered."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "jaxalign.kernels":
            return None
        folder = os.path.join(_CHECKOUT, "kernels")
        return importlib.util.spec_from_file_location(
            fullname, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])


if (not os.path.isdir(os.path.join(_HERE, "kernels"))
        and os.path.isfile(os.path.join(_CHECKOUT, "pyproject.toml"))
        and os.path.isfile(os.path.join(_CHECKOUT, "kernels", "_common.py"))
        and importlib.util.find_spec("jaxalign.kernels") is None):
    sys.meta_path.append(_CheckoutKernels())
