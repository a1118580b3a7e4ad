"""What the engine needs to know about a model family, and the registry of supported families.

The engine itself is family-agnostic: it hooks the text decoder's attention function, its
decoder layers and the cache. A :class:`Family` answers the few questions whose answer differs
between VLM families:

- where the text decoder and its layers are (``model.model.language_model`` for most,
  ``model.model.text_model`` for Idefics3 / SmolVLM),
- which token ids are vision tokens (image and video placeholders),
- which per-forward extras prefill pruning must gather with the hidden states (Qwen3-VL's
  DeepStack embeddings),
- whether kept tokens may be renumbered after prefill pruning (1-D RoPE without sliding
  windows), and how a layer's RoPE embeddings are formed for other positions.

Positions need no family code: the engine records 1-D token order for its bookkeeping only
(keys arrive with RoPE applied), prefill pruning gathers whatever ``position_ids`` /
``position_embeddings`` the decoder loop passes (1-D or 3-D M-RoPE), and ``generate`` carries
positions (and Qwen's ``rope_deltas``) itself. Sliding-window layers (Gemma 3) need none either:
their attention modules pass ``sliding_window`` to the attention function, which the engine
honours in decode.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

if TYPE_CHECKING:
    from avl_lab.engine.generation import Run
    from avl_lab.engine.stages import PruneState
    from avl_lab.engine.vision import VisionTap

_FAMILIES: dict[str, Family] = {}


class Family:
    """Default answers, right for LLaVA-style models; a family overrides what differs.

    Class attributes
    ----------------
    name : str
        Human-readable family name (README table, error messages).
    model_types : tuple of str
        ``config.model_type`` values this family covers.
    classes : tuple of str
        The ``*ForConditionalGeneration`` classes, for the docs.
    """

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    classes: ClassVar[tuple[str, ...]] = ()
    text_model_attr: ClassVar[str] = "language_model"
    vision_token_attrs: ClassVar[tuple[str, ...]] = ("image_token_id", "image_token_index")

    def text_model(self, model: nn.Module) -> nn.Module:
        """The text decoder (the module whose ``layers`` are the decoder layers)."""
        return getattr(model.model, self.text_model_attr)

    def decoder_layers(self, model: nn.Module) -> list[nn.Module]:
        """The text decoder's layers, in order."""
        return list(self.text_model(model).layers)

    def vision_token_ids(self, config: Any) -> tuple[int, ...]:
        """Ids of the placeholder tokens that stand for image (and video) features."""
        ids = []
        for attr in self.vision_token_attrs:
            value = getattr(config, attr, None)
            if value is not None and value not in ids:
                ids.append(int(value))
        return tuple(ids)

    def capture_extras(self, run: Run, text_kwargs: dict[str, Any]) -> None:
        """Prefill: keep what prefill pruning must gather from the text model's kwargs."""

    def gather_extras(self, run: Run, stage: PruneState) -> None:
        """A stage's first layer: cut the captured extras to its tokens (``stage.rel``
        ``[B, m]`` gathers them from the previous stage's)."""

    #: Whether prefill pruning may renumber the kept tokens' positions: 1-D RoPE, and no
    #: sliding-window mask measured in the original positions.
    renumbers_positions: ClassVar[bool] = True

    def check_policy(self, policy: Any) -> None:
        """A clear error for a policy this family cannot run (renumbered positions).

        Raises
        ------
        ValueError
            Naming the family and the policy.
        """
        if policy.needs_vision and self.why_no_vision:
            raise ValueError(
                f"policy {getattr(policy, 'name', '') or type(policy).__name__!r} reads the vision "
                f"tower's CLS attention, which {self.name} does not offer: {self.why_no_vision}; "
                "use a method on the projected embeddings (divprune) or a LLaVA / LLaVA-NeXT model")
        if policy.prune_positions == "renumber" and not self.renumbers_positions:
            raise ValueError(
                f"policy {getattr(policy, 'name', '') or type(policy).__name__!r} renumbers the "
                f"kept tokens' positions, which {self.name} does not allow ({self.why_not_renumber}); "
                "use positions=keep (each kept token keeps its original position)")

    why_not_renumber: ClassVar[str] = ""
    #: Why pre-LLM policies cannot read this family's vision tower ("": :meth:`vision_tap` works).
    why_no_vision: ClassVar[str] = "its vision tower has no CLS token"

    def vision_tap(self, model: nn.Module) -> VisionTap:
        """Hooks that read the vision tower's CLS attention (:mod:`avl_lab.engine.vision`)."""
        raise ValueError(f"{self.name}: {self.why_no_vision}")

    def final_norm(self, text_model: nn.Module) -> nn.Module:
        """The text decoder's final norm (before the LM head)."""
        return text_model.norm

    def rope(self, text_model: nn.Module, hidden: Tensor, position_ids: Tensor):
        """The RoPE embeddings ``(cos, sin)`` of ``position_ids`` (a family that renumbers has
        one kind of layer)."""
        return text_model.rotary_emb(hidden, position_ids)


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: make a :class:`Family` subclass known under its ``model_types``."""
    instance = cls()
    for model_type in cls.model_types:
        _FAMILIES[model_type] = instance
    return cls


def families() -> list[Family]:
    """The registered families, once each, in registration order."""
    _load()
    seen: list[Family] = []
    for fam in _FAMILIES.values():
        if fam not in seen:
            seen.append(fam)
    return seen


def family_for_type(model_type: str | None) -> Family | None:
    """The family registered for a ``config.model_type`` (None when none is)."""
    _load()
    return _FAMILIES.get(model_type)


def family_of(model: nn.Module) -> Family:
    """The family of ``model``; ``TypeError`` listing the supported families otherwise."""
    _load()
    config = getattr(model, "config", None)
    fam = _FAMILIES.get(getattr(config, "model_type", None))
    if fam is not None:
        try:
            layers = fam.decoder_layers(model)
        except AttributeError:
            layers = None
        ok = layers and all(hasattr(getattr(x, "self_attn", None), "layer_idx") for x in layers)
        if ok and fam.vision_token_ids(config):
            return fam
    supported = "; ".join(f"{f.name} ({', '.join(f.classes)})" for f in families())
    raise TypeError(
        f"avl_lab.attach does not support {type(model).__name__} "
        f"(model_type={getattr(config, 'model_type', None)!r}); supported families: {supported}"
    )


_MODULES = ("llava", "qwen_vl", "gemma3", "idefics3", "internvl")


def _load() -> None:
    """Import the family modules (each registers itself), in the order the docs list them."""
    for name in _MODULES:
        importlib.import_module(f"avl_lab.engine.families.{name}")
