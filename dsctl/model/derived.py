"""Inference-only tensors computed from a module's parameters, kept until the parameters change.

Decoding re-reads the same weights every step, so a layout or product of them that makes
the step cheaper (experts stacked for one grouped GEMM, MLA's absorbed projections folded
into one matrix) is worth computing once. The copy is keyed by every source's storage
pointer and in-place version counter: an optimizer step, `load_state_dict` or `.to()`
changes one of the two, and the next call rebuilds. It is never saved with the module and
never carries gradients, so callers use it only where autograd is off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")


def derived(owner: nn.Module, name: str, sources: Sequence[torch.Tensor], build: Callable[[], T]) -> T:
    """`build()`, computed again only when one of `sources` was replaced or modified."""
    key = tuple((p.data_ptr(), p._version) for p in sources)
    held = owner.__dict__.get(name)  # a plain attribute: not a buffer, not in state_dict
    if held is None or held[0] != key:
        with torch.no_grad():
            held = (key, build())
        owner.__dict__[name] = held
    return held[1]
