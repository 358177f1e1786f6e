"""Experiment configs: each module's `get_config(arg)` returns the ConfigDict of one paper setup
(`python -m jaxalign --config experiments/<file>.py[:arg]`). Default workdirs are under
`results/` in the current directory, never a fixed path in the shared temp directory."""


def check_arg(arg: str, known: tuple[str, ...], where: str) -> str:
    """`arg` if it is one of `known` ("" is the default config); else an error listing them."""
    if arg not in known:
        shown = ", ".join(repr(k) if k else "'' (no argument: the full config)" for k in known)
        raise ValueError(f"{where}: unknown config argument {arg!r}; known: {shown}")
    return arg
