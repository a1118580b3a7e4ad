"""A decode step a GPU will not stall on: the host syncs of a decode forward do not grow with
the number of layers.

Counted on the CPU with a ``TorchDispatchMode``: every op that reads a device value back
(``aten._local_scalar_dense``: ``.item()``, ``int(t)``, ``bool(t)``; ``aten.nonzero`` and its
data-dependent shape) plus ``Tensor.tolist`` (which no dispatch mode sees), per decode forward
of the model, from the second decode step on (the first one still holds prefill's leftovers).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from avl_lab import attach
from avl_lab.models import tiny_random
from tests.helpers import make_inputs

SYNC_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}
POLICIES = {
    "full": "full",
    "avl": {"name": "avl", "S": 45, "C": 30, "K": 3},
    "avl + T": {"name": "avl", "S": 45, "C": 30, "K": 3, "T": 50},
    "h2o": {"name": "h2o", "ratio": 0.5},
    "snapkv": {"name": "snapkv", "ratio": 0.5},
    "avl per head": {"name": "vision_tiering", "S": 45, "C": 30, "per_head": True},
}
NEW = 6


class SyncCounter(TorchDispatchMode):
    """Host syncs per decode forward (a pre-hook on the model opens a forward, a hook closes it)."""

    def __init__(self, model, prompt_len: int) -> None:
        super().__init__()
        self.counts: list[int] = []
        self.on = False
        self.prompt_len = prompt_len
        self.handles = [model.register_forward_pre_hook(self._open, with_kwargs=True),
                        model.register_forward_hook(self._close)]

    def _open(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        past = kwargs.get("cache") or kwargs.get("past_key_values")
        length = past.get_seq_length() if past is not None else 0
        self.on = ids is not None and ids.shape[1] == 1 and length > self.prompt_len
        if self.on:
            self.counts.append(0)

    def _close(self, module, args, output):
        self.on = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on and func in SYNC_OPS:
            self.counts[-1] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        counter = self
        self._tolist = torch.Tensor.tolist

        def tolist(t):
            if counter.on:
                counter.counts[-1] += 1
            return counter._tolist(t)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        for h in self.handles:
            h.remove()
        return super().__exit__(*exc)


def syncs_per_step(layers: int, policy) -> list[int]:
    model, processor = tiny_random("llava", seed=0, num_hidden_layers=layers)
    inputs = make_inputs(processor, n=2)
    counter = SyncCounter(model, inputs["input_ids"].shape[1])
    kw = dict(max_new_tokens=NEW, do_sample=False)
    with counter:
        if policy is None:
            model.generate(**inputs, **kw)
        else:
            with attach(model, policy) as session:
                session.generate(**inputs, **kw)
    assert len(counter.counts) == NEW - 2  # decode forwards from step 2 on
    return counter.counts


@pytest.fixture(scope="module")
def stock():
    return {L: syncs_per_step(L, None) for L in (2, 8)}


@pytest.mark.parametrize("name", list(POLICIES))
def test_host_syncs_per_decode_step_do_not_grow_with_layers(stock, name):
    two, eight = syncs_per_step(2, POLICIES[name]), syncs_per_step(8, POLICIES[name])
    msg = f"{name}: 2 layers {two}, 8 layers {eight}; stock {stock[2]} / {stock[8]}"
    assert two == eight, msg
    assert max(eight) <= max(stock[8]) + 1, msg  # at most one more than stock: the compaction


def test_the_counter_sees_a_sync_per_layer():
    """A per-layer ``.item()`` is what the test must catch: 8 layers count 6 more than 2."""
    from avl_lab.policies.base import Policy

    class ItemPerLayer(Policy):
        def decode_active(self, layer, ctx):
            int(layer.valid.sum())
            return None

    two, eight = syncs_per_step(2, ItemPerLayer()), syncs_per_step(8, ItemPerLayer())
    assert [e - t for t, e in zip(two, eight)] == [6] * len(two)
