"""Tiny random models are deterministic per seed; token layouts are read from input_ids."""

from __future__ import annotations

import pytest
import torch

from avl_lab.engine.layout import Modality, token_layout
from avl_lab.models import tiny_random
from tests.helpers import make_inputs


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_same_seed_same_model(kind):
    a, _ = tiny_random(kind, seed=3)
    b, _ = tiny_random(kind, seed=3)
    c, _ = tiny_random(kind, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_llava15_layout_override():
    model, processor = tiny_random("llava", image_seq_length=576, patch_size=1)
    inputs = make_inputs(processor, n=1, sizes=[(24, 24)])
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 576
    with pytest.raises(ValueError, match="image_seq_length"):
        tiny_random("llava", image_seq_length=500)
    with pytest.raises(ValueError, match="bogus"):
        tiny_random("llava", bogus=1)


def test_token_layout_by_hand():
    img = 9
    ids = torch.tensor([[0, 0, 5, 6, img, img, 7, 8],    # 2 pads, 2 system, 2 image, 2 instruction
                        [5, img, img, img, 6, 7, 8, 3]])  # 1 system, 3 image, 4 instruction
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    lay = token_layout(ids, mask, img)
    S, V, T, P = Modality.SYSTEM, Modality.IMAGE, Modality.INSTRUCTION, Modality.PAD
    assert lay.modality.tolist() == [[P, P, S, S, V, V, T, T], [S, V, V, V, T, T, T, T]]
    assert lay.pos[0, 2:].tolist() == list(range(6)) and lay.pos[1].tolist() == list(range(8))
    assert lay.n_image.tolist() == [2, 3] and lay.n_prompt.tolist() == [6, 8]
    no_image = token_layout(torch.tensor([[5, 6, 7]]), None, img)
    assert no_image.modality.tolist() == [[T, T, T]]
