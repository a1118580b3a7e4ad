"""What the tiny random model builders share: decoder / vision sizes, config keywords, seeding.

Each family builder (:mod:`avl_lab.models.tiny`, :mod:`~avl_lab.models.tiny_qwen`,
:mod:`~avl_lab.models.tiny_gemma3`, :mod:`~avl_lab.models.tiny_idefics3`,
:mod:`~avl_lab.models.tiny_internvl`, :mod:`~avl_lab.models.tiny_onevision`) keeps its own
config fields, tokenizer, HF configs and processor, and builds on these pieces:

- :class:`DecoderWidths` / :class:`DecoderSizes`: the size fields every family has, with the
  grouped-query-attention check; the family configs are dataclasses inheriting from them.
- :func:`text_kwargs` / :func:`vision_kwargs`: the keywords of the text / vision HF configs
  taken from those fields (and the tokenizer's vocabulary and special ids).
- :func:`with_overrides`: the family config with keyword overrides, unknown names refused.
- :func:`build_seeded`: the model built under a seeded, forked RNG, in eval mode, generation
  without eos.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import torch
from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

C = TypeVar("C", bound="DecoderWidths")
M = TypeVar("M", bound=PreTrainedModel)


@dataclass
class DecoderWidths:
    """Sizes every tiny family has but the decoder's layer count; every field overridable.

    Raises
    ------
    ValueError
        If ``num_attention_heads`` is not a multiple of ``num_key_value_heads``. Subclasses with
        their own ``__post_init__`` call this one (checks run in the subclass's order).
    """

    vision_hidden_size: int = 32
    """Vision-encoder width."""
    vision_layers: int = 2
    vision_heads: int = 2
    vision_mlp_ratio: int = 2
    """Vision-encoder MLP width as a multiple of its width."""
    hidden_size: int = 64
    """Decoder width."""
    intermediate_size: int = 128
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 512
    max_position_embeddings: int = 4096

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                "`num_attention_heads` must be a multiple of `num_key_value_heads`, got "
                f"{self.num_attention_heads} and {self.num_key_value_heads}"
            )


@dataclass
class DecoderSizes(DecoderWidths):
    """:class:`DecoderWidths` and the decoder's layer count (all families but Gemma 3, whose
    layer count is its ``layer_types``' length)."""

    num_hidden_layers: int = 4


def with_overrides(cfg_cls: type[C], overrides: dict[str, Any], label: str) -> C:
    """The default ``cfg_cls()`` with ``overrides`` applied (and its checks run again).

    Parameters
    ----------
    cfg_cls : type
        A family config dataclass (a :class:`DecoderWidths` subclass).
    overrides : dict
        Field names to values.
    label : str
        Names the builder in the error, e.g. ``"gemma3"`` or ``"tiny_random"``.

    Returns
    -------
    The config.

    Raises
    ------
    ValueError
        For names that are not fields of ``cfg_cls`` (listing the allowed ones), or from the
        config's own checks.
    """
    names = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {label} override(s) {unknown}; allowed: {sorted(names)}")
    return replace(cfg_cls(), **overrides)


def text_kwargs(
    cfg: DecoderWidths, tok: PreTrainedTokenizerFast, *, bos_eos: bool = True
) -> dict[str, Any]:
    """Keywords of a family's text-decoder config: sizes from ``cfg``, ids from ``tok``.

    Parameters
    ----------
    cfg : DecoderWidths
        The family config; it must have ``num_hidden_layers`` (a field or a property).
    tok : PreTrainedTokenizerFast
        The tiny tokenizer: ``vocab_size`` is its length (special tokens included).
    bos_eos : bool
        Also pass ``bos_token_id`` / ``eos_token_id`` (Qwen3-VL's text config takes neither).

    Returns
    -------
    dict
        ``vocab_size``, ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
        ``num_attention_heads``, ``num_key_value_heads``, ``max_position_embeddings``,
        ``pad_token_id`` (and ``bos_token_id``, ``eos_token_id``).
    """
    kwargs: dict[str, Any] = dict(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,  # type: ignore[attr-defined]
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tok.pad_token_id,
    )
    if bos_eos:
        kwargs.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return kwargs


def vision_kwargs(cfg: DecoderWidths) -> dict[str, Any]:
    """Keywords of a ViT-style vision config (CLIP, SigLIP, Idefics3, InternViT) from ``cfg``.

    Returns
    -------
    dict
        ``hidden_size``, ``intermediate_size`` (``vision_mlp_ratio`` × the width),
        ``num_hidden_layers`` and
        ``num_attention_heads``; the family adds image and patch sizes.
    """
    return dict(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_mlp_ratio * cfg.vision_hidden_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
    )


def build_seeded(
    model_cls: Callable[[PreTrainedConfig], M],
    config: PreTrainedConfig,
    tok: PreTrainedTokenizerFast,
    seed: int,
    init: Callable[[M], None] | None = None,
) -> M:
    """``model_cls(config)`` with weights drawn from ``seed``, leaving the global RNG as it was.

    Parameters
    ----------
    model_cls : callable
        The model class.
    config : PreTrainedConfig
        Its config.
    tok : PreTrainedTokenizerFast
        Gives the generation config's ``pad_token_id``.
    seed : int
        Seeds the weights; the same seed gives the same model.
    init : callable, optional
        Re-initialises parts of the new model, drawing from the same seeded RNG right after
        construction (Gemma 3's zero-initialised image projection).

    Returns
    -------
    The model in eval mode, its generation config without ``eos_token_id`` (generation runs to
    ``max_new_tokens``) and with the tokenizer's ``pad_token_id``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        if init is not None:
            init(model)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = tok.pad_token_id
    return model
