"""jaxalign: JAX-native alignment of language models (DPO family, SPPO, ReST, CGPO, GenARM)."""

__version__ = "0.1.0"
