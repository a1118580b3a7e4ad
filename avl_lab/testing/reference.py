"""The masked reference: the stock model, no eviction, with masks that hide what a policy dropped.

A policy run under :func:`avl_lab.attach` (``record=True``) traces, for every layer, which token
columns took part in attention: in prefill the tokens present in the layer (prefill pruning), in
each decode step the active rows. The reference replays greedy decoding with the stock model, a
stock ``DynamicCache`` holding every row, the ``position_ids`` ``generate`` would form (the
model's own ``_prepare_position_ids_for_generation``: 1-D, or Qwen's 3-D M-RoPE with
``rope_deltas``), the input embeddings a pre-LLM policy wrote (merged tokens), and per layer a 4-D boolean mask that shows only those columns on top of the
library's own mask (causal, padding, Gemma 3's sliding windows and image blocks), computed by
transformers' own SDPA function. Real eviction must give the same tokens and logits within
float tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import AttentionInterface, AttentionMaskInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from avl_lab.engine.generation import Trace
from avl_lab.engine.session import attach, decoder_layers

REF_ATTN = "avl_lab_masked_reference"


@dataclass
class ReferenceOutput:
    """Greedy tokens ``[B, T]`` and per-step logits ``[T, B, V]`` (fp32)."""

    tokens: Tensor
    logits: Tensor


def _ref_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    visible: Tensor = module._avl_ref_visible  # [B, kv] or [B, Hkv, kv] bool columns it may see
    B, Hq, q, _ = query.shape
    kv = key.shape[2]
    if attention_mask is None:
        attention_mask = torch.ones(q, kv, dtype=torch.bool, device=key.device).tril(kv - q)[None, None]
    if visible.dim() == 3:  # per KV head: each query head sees its group's columns
        visible = visible.repeat_interleave(Hq // visible.shape[1], dim=1)  # [B, Hq, kv]
        mask = attention_mask.to(torch.bool).expand(B, Hq, q, kv) & visible[:, :, None, :kv]
    else:
        mask = attention_mask.to(torch.bool).expand(B, 1, q, kv) & visible[:, None, None, :kv]
    empty = ~mask.any(-1, keepdim=True)  # queries that see nothing: let them see themselves
    diag = torch.zeros(q, kv, dtype=torch.bool, device=key.device)
    diag[torch.arange(q), torch.arange(kv - q, kv)] = True
    mask = mask | (empty & diag[None, None])
    return sdpa_attention_forward(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kw)


def _columns(cols: Tensor, width: int) -> Tensor:
    """``[B, (Hkv,) n]`` column indices (``-1`` = none) → ``[B, (Hkv,) width]`` bool."""
    out = torch.zeros(*cols.shape[:-1], width + 1, dtype=torch.bool, device=cols.device)
    out.scatter_(-1, cols.masked_fill(cols < 0, width), True)
    return out[..., :width]


@torch.no_grad()
def masked_reference(model, inputs: dict[str, Any], trace: Trace, max_new_tokens: int) -> ReferenceOutput:
    """Greedy decoding of ``inputs`` with the stock model under the masks of ``trace``."""
    AttentionInterface.register(REF_ATTN, _ref_attention)
    AttentionMaskInterface.register(REF_ATTN, sdpa_mask)
    layers = decoder_layers(model)
    old = {
        "text_config": model.config.text_config._attn_implementation,
        "vision_config": model.config.vision_config._attn_implementation,
    }
    input_ids, attn = inputs["input_ids"], inputs["attention_mask"]
    B, P = input_ids.shape
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    cache = DynamicCache()  # full layers only: the library's mask applies any sliding window
    pos = model._prepare_position_ids_for_generation(
        input_ids, {"input_ids": input_ids, "attention_mask": attn, "cache": cache, **extra}
    )
    tokens, logits = [], []
    hooks = []
    if trace.inputs_embeds is not None:  # a pre-LLM policy wrote embeddings: the prefill reads them
        from avl_lab.engine.families import family_of

        def written(module, args, kwargs):
            if kwargs.get("inputs_embeds") is not None and kwargs["inputs_embeds"].shape[1] == P:
                kwargs["inputs_embeds"] = trace.inputs_embeds
            return args, kwargs

        hooks.append(family_of(model).text_model(model).register_forward_pre_hook(
            written, with_kwargs=True))
    try:
        model.set_attn_implementation({"text_config": REF_ATTN, "vision_config": old["vision_config"]})
        for i, layer in enumerate(layers):
            layer.self_attn._avl_ref_visible = _columns(trace.prefill[i], P)
        out = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, cache=cache,
                    use_cache=True, logits_to_keep=1, **extra)
        for t in range(1, max_new_tokens + 1):
            step_logits = out.logits[:, -1].float()
            logits.append(step_logits)
            tokens.append(step_logits.argmax(-1))
            if t == max_new_tokens:
                break
            attn = torch.cat([attn, attn.new_ones(B, 1)], dim=1)
            for i, layer in enumerate(layers):
                layer.self_attn._avl_ref_visible = _columns(trace.decode[t - 1][i], P + t)
            pos = pos[..., -1:] + 1
            out = model(input_ids=tokens[-1][:, None], attention_mask=attn, position_ids=pos,
                        cache=cache, use_cache=True, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
        for layer in layers:
            if hasattr(layer.self_attn, "_avl_ref_visible"):
                del layer.self_attn._avl_ref_visible
        model.set_attn_implementation(old)
    return ReferenceOutput(tokens=torch.stack(tokens, 1), logits=torch.stack(logits))


@torch.no_grad()
def run_policy(model, inputs: dict[str, Any], policy: Any, max_new_tokens: int, seed: int = 0):
    """Greedy generation under ``policy`` with a trace: ``(ReferenceOutput, session)``."""
    with attach(model, policy, record=True, seed=seed) as session:
        out = session.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                               output_logits=True, return_dict_in_generate=True)
    P = inputs["input_ids"].shape[1]
    got = ReferenceOutput(tokens=out.sequences[:, P:], logits=torch.stack(out.logits).float())
    return got, session
