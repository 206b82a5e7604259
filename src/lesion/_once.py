"""Refuse a lesioned module that runs more than once in one forward pass of the model.

A module used twice (one ``nn.ReLU`` applied after two layers) has no single unit axis: deleting its
unit 3 would delete unit 3 of two different layers. ``find_sites`` leaves such modules out; this guard
makes ``ablate`` without sites refuse them on the first forward pass instead of clamping both calls.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn

from lesion.errors import SiteError


@contextmanager
def once_per_forward(model: nn.Module, layers: Iterable[str]) -> Iterator[None]:
    """Inside the block, a forward pass of ``model`` that calls any of ``layers`` twice raises SiteError.

    Calls of a submodule outside a forward pass of ``model`` itself are not counted, and each thread
    counts its own forward passes.
    """
    named = dict(model.named_modules())
    watched = [n for n in dict.fromkeys(layers) if n in named and named[n] is not model]
    state = threading.local()  # per thread: forward passes in other threads count on their own

    def enter(module, args) -> None:
        if getattr(state, "depth", 0) == 0:
            state.calls = Counter()
        state.depth = getattr(state, "depth", 0) + 1

    def leave(module, args, output) -> None:
        state.depth -= 1

    def count(name: str):
        def hook(module, args) -> None:
            if getattr(state, "depth", 0) == 0:
                return
            state.calls[name] += 1
            if state.calls[name] > 1:  # leave() still runs (always_call), so depth stays right
                raise SiteError(
                    f"module {name!r} runs more than once per forward pass, so its units are ambiguous; "
                    "expected a module used once (give each use its own module)"
                )

        return hook

    handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave, always_call=True)]
    handles += [named[n].register_forward_pre_hook(count(n)) for n in watched]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
