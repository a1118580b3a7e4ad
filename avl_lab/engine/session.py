"""``avl_lab.attach``: run a KV-cache policy inside the stock ``model.generate``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
from transformers.masking_utils import sdpa_mask

from avl_lab.engine.attention import ATTN_NAME, avl_attention
from avl_lab.engine.families import Family, family_of
from avl_lab.engine.generation import Run
from avl_lab.engine.layout import token_layout
from avl_lab.engine.prune_hooks import make_pre_hook, make_text_hook
from avl_lab.engine.stats import CacheStats, steps_until_eos
from avl_lab.policies import Policy, build

_REGISTERED = False


def register_attention() -> None:
    """Register the ``avl_lab`` attention (and its mask, or padding would be ignored); idempotent."""
    global _REGISTERED
    if not _REGISTERED:
        AttentionInterface.register(ATTN_NAME, avl_attention)
        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
        _REGISTERED = True


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The text decoder layers of a supported VLM; ``TypeError`` listing the families otherwise."""
    return family_of(model).decoder_layers(model)


class Session:
    """A model with a policy attached. Use :meth:`generate` like ``model.generate``.

    Attributes
    ----------
    stats : CacheStats or None
        Cache accounting of the last :meth:`generate` call.
    last_run : Run or None
        The last call's state (cache, trace when ``record=True``).
    """

    def __init__(self, model: PreTrainedModel, policy: Policy, record: bool = False, seed: int = 0):
        self.model = model
        self.family: Family = family_of(model)
        self.vision_ids = self.family.vision_token_ids(model.config)
        self.policy = policy
        self.record = record
        self.seed = seed
        self.run: Run | None = None
        self.last_run: Run | None = None
        self.stats: CacheStats | None = None
        self.num_layers = len(self.family.decoder_layers(model))
        self.vision_tap = None  # hooks on the vision tower, when the policy reads it
        self._stock_generate = model.generate  # the model's own, before attach covers it

    def generate(self, **kwargs: Any):
        """``model.generate(**kwargs)`` with a fresh policy cache; sets :attr:`stats`."""
        if "past_key_values" in kwargs or "cache" in kwargs:
            raise ValueError("the cache is managed by the session; do not pass `cache`")
        if kwargs.get("use_cache") is False:
            raise ValueError("`use_cache=False` disables the KV cache the policy acts on")
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise ValueError("`input_ids` is required (the token layout is read from it)")
        layout = token_layout(input_ids, kwargs.get("attention_mask"), self.vision_ids)
        max_new = _max_new_tokens(kwargs, self.model, input_ids.shape[1])
        run = Run(self.policy, layout, self.num_layers, max_new, record=self.record, seed=self.seed)
        if self.vision_tap is not None:
            self.vision_tap.reset()
            run.vision, run.image_info = self.vision_tap, kwargs.get("image_sizes")
        self.run = run
        run.begin()
        try:
            out = self._stock_generate(**kwargs, cache=run.cache)
        finally:
            run.finish()
            self.run = None
            self.last_run = run
        steps = steps_until_eos(out, input_ids.shape[1], run.step, kwargs, self.model.generation_config)
        self.stats = run.stats(steps)
        return out


def _max_new_tokens(kwargs: dict[str, Any], model: PreTrainedModel, prompt_len: int) -> int:
    gc = kwargs.get("generation_config") or model.generation_config
    if kwargs.get("max_new_tokens") is not None:
        return int(kwargs["max_new_tokens"])
    if kwargs.get("max_length") is not None:
        return max(1, int(kwargs["max_length"]) - prompt_len)
    if gc.max_new_tokens is not None:
        return int(gc.max_new_tokens)
    return max(1, int(gc.max_length) - prompt_len)


@contextlib.contextmanager
def attach(
    model: PreTrainedModel, policy: Any = "full", *, record: bool = False, seed: int = 0
) -> Iterator[Session]:
    """Install ``policy`` on ``model`` for the duration of the ``with`` block.

    Parameters
    ----------
    model : PreTrainedModel
        A stock Hugging Face VLM of a supported family (:func:`avl_lab.engine.families.families`).
    policy : Policy, str, dict or OmegaConf node
        Anything :func:`avl_lab.policies.build` accepts.
    record : bool
        Keep a trace of the token columns every layer used (for reference runs in tests).
    seed : int
        Seeds policies that draw random numbers (e.g. ``random``).

    Yields
    ------
    Session
        Its ``generate`` runs the stock ``model.generate`` under the policy. Inside the block
        ``model.generate`` is that too (as kvpress's ``with press(model)``), so pipelines and
        harnesses that call it apply the policy; ``session.stats`` describes the last call.

    Raises
    ------
    RuntimeError
        The model already has a policy attached (an enclosing ``attach`` on it): sessions do
        not nest.

    The attention implementation, hooks, attributes and ``generate`` are restored on exit, also
    on error.
    """
    policy = build(policy)
    family = family_of(model)
    family.check_policy(policy)
    layers = family.decoder_layers(model)
    if any(getattr(layer.self_attn, "_avl_session", None) is not None for layer in layers):
        raise RuntimeError("this model already has a policy attached (an enclosing "
                           "`avl_lab.attach`): leave that block first; sessions do not nest")
    register_attention()
    old_impl = {
        "text_config": model.config.text_config._attn_implementation,
        "vision_config": model.config.vision_config._attn_implementation,
    }
    session = Session(model, policy, record=record, seed=seed)
    handles = []
    try:
        model.set_attn_implementation({"text_config": ATTN_NAME, "vision_config": old_impl["vision_config"]})
        for i, layer in enumerate(layers):
            layer.self_attn._avl_session = session
            handles.append(layer.register_forward_pre_hook(make_pre_hook(session, i), with_kwargs=True))
        if policy.needs_vision:
            session.vision_tap = family.vision_tap(model)
            handles.extend(session.vision_tap.install())
        text_model = family.text_model(model)
        handles.append(text_model.register_forward_pre_hook(make_text_hook(session), with_kwargs=True))
        model.generate = session.generate  # an instance attribute over the class's method
        yield session
    finally:
        if model.__dict__.get("generate") == session.generate:
            del model.generate
        for h in handles:
            h.remove()
        for layer in layers:
            if hasattr(layer.self_attn, "_avl_session"):
                del layer.self_attn._avl_session
        model.set_attn_implementation(old_impl)
