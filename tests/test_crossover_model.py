"""The crossover benchmark's bytes model counts every weight a timed decode step reads: each
decoder layer's, the final norm's and the LM head's (not the embedding table, of which one row is
read), and the K/V bytes of a row over all layers; hand-counted from the configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("layout", ["llava15", "qwen2_5_vl"])
def test_bytes_model_counts_the_weights_a_step_reads(layout):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decode_crossover import build, bytes_model

    model = build(layout, 2, torch.float32, torch.device("cpu"), tiny=True)
    cfg = model.config.text_config
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    bias = q + 2 * kv if layout == "qwen2_5_vl" else 0  # Qwen2's q/k/v projections have biases
    layer = h * q + 2 * h * kv + q * h + bias + 3 * h * i + 2 * h  # attention, MLP, two norms
    weights = 2 * layer + h + v * h  # + the final norm and the LM head
    w, kv_row = bytes_model(model, 3)
    assert w == 4 * weights
    assert kv_row == 2 * 2 * kv * 4 * 3  # K and V, 2 layers, fp32, batch 3
