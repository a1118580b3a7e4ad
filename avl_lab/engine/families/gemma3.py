"""Gemma 3: image tokens at ``config.image_token_id`` (``<image_soft_token>``).

Two things differ from LLaVA, and neither needs code here:

- ``token_type_ids`` make attention bidirectional inside each image block in prefill; the
  library builds that mask and the engine's prefill attention uses it as it is.
- Local layers attend within a sliding window (5 local : 1 global). Their attention modules
  pass ``sliding_window`` to the attention function; in decode the engine lets a sliding layer
  use only rows inside the window (``tok > current - window``, as
  ``masking_utils.sliding_window_overlay``) and evicts rows that have left it, as the stock
  ``DynamicSlidingWindowLayer`` does. Cache accounting counts, for such a layer, the rows the
  stock cache would use (``min(window, prompt + t)``) as its Full.
"""

from __future__ import annotations

from avl_lab.engine.families.base import Family, register_family


@register_family
class Gemma3(Family):
    name = "Gemma 3"
    model_types = ("gemma3",)
    classes = ("Gemma3ForConditionalGeneration",)
    renumbers_positions = False
    why_no_vision = "its SigLIP tower has no CLS token"
    why_not_renumber = ("its sliding windows and image blocks are masks over the original "
                        "positions")
