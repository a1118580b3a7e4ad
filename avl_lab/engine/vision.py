"""The vision tower's attention for pre-LLM policies, read with hooks on the stock tower.

VisionZip and VisPruner rank each crop's patches by the attention its CLS token pays them in the
layer whose output the VLM reads (LLaVA's ``vision_feature_layer``), and VisionZip merges the
rest by the similarity of that layer's keys. A :class:`VisionTap` hooks that encoder layer of
the stock CLIP tower (no fork, no ``output_attentions``): a pre-hook on its attention module
recomputes the CLS query's softmax row from the module's own ``q_proj`` / ``k_proj`` (one query,
so a few kFLOPs beside the layer) and the head-mean keys; a forward hook keeps the layer's
output (the features the projector reads). :meth:`VisionTap.features` then says, for every
patch, which prompt column holds its token (LLaVA: the image's block in order; LLaVA-NeXT: the
stock ``pack_image_features`` itself maps the crops through unpadding and newline tokens).

What other towers offer (each is a clear error at ``attach``): SigLIP (LLaVA-OneVision, Gemma 3,
Idefics3 / SmolVLM) has no CLS token; Qwen2/2.5/3-VL's ViT has none either and merges 2×2
patches before the LLM; InternViT has one, but its patches reach the LLM pixel-shuffled (4 per
token). DivPrune needs none of this: it reads the projected embeddings every family has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["VisionFeatures", "VisionTap"]


@dataclass
class VisionFeatures:
    """What the vision tower computed for the images of one prefill, crop by crop.

    Attributes
    ----------
    cls_attn : ``[n, H, N]`` fp32, the CLS query's attention over the crop's N patches (each
        head's softmax row over CLS and patches, the CLS column dropped).
    keys : ``[n, N, Dh]`` the patches' keys, averaged over heads (VisionZip's ``metric``).
    features : ``[n, 1 + N, Dv]`` the layer's output, CLS first (what the projector reads).
    slot : ``[n, N]`` int64, the flat prompt index ``b * P + column`` of each patch's token
        (``-1``: the patch reaches no token, e.g. cut by LLaVA-NeXT's unpadding).
    image_slots : per image, in prompt order, the flat prompt indices of its token block.
    image_crops : per image, its crops (rows of the tensors above), the base crop first.
    project : the model's projector (vision features → language-model embeddings).
    """

    cls_attn: Tensor
    keys: Tensor
    features: Tensor
    slot: Tensor
    image_slots: list[Tensor]
    image_crops: list[Tensor]
    project: Callable[[Tensor], Tensor]


class VisionTap:
    """Hooks on one encoder layer of a CLIP tower; what they saw in the current prefill."""

    def __init__(self, layer: nn.Module, project: Callable[[Tensor], Tensor],
                 pack: Callable[[Tensor, Any], list[Tensor]]) -> None:
        self.layer = layer
        self.project = project
        self.pack = pack  # [n_crops, N, 1] per-patch values → per image, values at its tokens
        self.cls_attn: Tensor | None = None
        self.keys: Tensor | None = None
        self.out: Tensor | None = None

    def install(self) -> list[Any]:
        """Register the hooks; returns their handles."""
        return [self.layer.self_attn.register_forward_pre_hook(self._attn_hook, with_kwargs=True),
                self.layer.register_forward_hook(self._out_hook)]

    def reset(self) -> None:
        self.cls_attn = self.keys = self.out = None

    def _attn_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        n, T, _ = x.shape
        with torch.no_grad():
            k = module.k_proj(x).view(n, T, module.num_heads, module.head_dim).float()
            q = module.q_proj(x[:, :1]).view(n, 1, module.num_heads, module.head_dim).float()
            logits = torch.einsum("nqhd,nthd->nht", q, k) * module.scale
        self.cls_attn = logits.softmax(-1)[..., 1:]  # [n, H, N]
        self.keys = k.mean(2)[:, 1:]  # [n, N, Dh]

    def _out_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.out = output[0] if isinstance(output, tuple) else output

    def features(self, image_columns: Tensor, image_info: Any) -> VisionFeatures:
        """The captured tensors with each patch's prompt slot.

        ``image_columns`` ``[B, P]`` bool marks the image tokens (filled by the model in row-major
        order with the images' packed features, as ``masked_scatter`` does); ``image_info``
        is what :attr:`pack` needs (LLaVA-NeXT's ``image_sizes``)."""
        if self.cls_attn is None or self.out is None:
            raise RuntimeError("avl_lab: the vision tower did not run in this prefill (a pre-LLM "
                               "policy that reads it needs pixel_values)")
        n, _, N = self.cls_attn.shape
        ids = torch.arange(n * N, device=self.out.device, dtype=torch.float32).view(n, N, 1)
        packed = self.pack(ids, image_info)  # per image: [L_i, 1] patch ids, -1 on newlines
        flat = image_columns.reshape(-1).nonzero()[:, 0]  # row-major image tokens
        total = sum(p.shape[0] for p in packed)
        if total != flat.numel():
            raise RuntimeError(f"avl_lab: {flat.numel()} image tokens in the prompt, {total} from "
                               "the vision tower")
        slot = torch.full((n * N,), -1, dtype=torch.long, device=flat.device)
        image_slots, image_crops, at = [], [], 0
        for p in packed:
            ids_i = p[:, 0].round().long()
            cols = flat[at:at + p.shape[0]]
            real = ids_i >= 0
            slot[ids_i[real]] = cols[real]
            image_slots.append(cols)
            crops = torch.unique(ids_i[real] // N)
            image_crops.append(crops)
            at += p.shape[0]
        return VisionFeatures(cls_attn=self.cls_attn, keys=self.keys, features=self.out,
                              slot=slot.view(n, N), image_slots=image_slots,
                              image_crops=image_crops, project=self.project)
