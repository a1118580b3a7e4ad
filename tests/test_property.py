"""Property-style check: random valid policy configurations on random batch compositions equal
the masked reference, and the model's own ``generate`` inside ``attach`` equals the session's.

Each case draws (seeded) a policy — A-VL with a random subset of S/C/K/P/T at random values, or
a registered policy's example with its budget redrawn — and a batch of 1–3 rows mixed from
one-image, two-image and text-only prompts (left padding wherever lengths differ), with an EOS
token (drawn from the unconstrained run's own tokens) ending some rows early. ``AVL_LAB_PROPERTY_CASES``
sets the number of cases (default 12, ~20 s here; more for a longer search).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

import avl_lab
from avl_lab import policies
from avl_lab.testing import masked_reference
from tests.helpers import random_image

CASES = int(os.environ.get("AVL_LAB_PROPERTY_CASES", "12"))
NEW = 8
ROWS = [  # (prompt, image sizes)
    ("USER: <image>\nWhat? ASSISTANT:", [(32, 32)]),
    ("USER: <image>\nWhat is written in the image, please tell me? ASSISTANT:", [(40, 70)]),
    ("USER: <image><image>\nCompare the two pictures. ASSISTANT:", [(64, 32), (32, 32)]),
    ("USER: Hello there, no picture today ASSISTANT:", []),
    ("USER: Hi ASSISTANT:", []),
]
# Decode and prefill policies whose example runs on LLaVA (pre-LLM ones need its vision tower).
BUDGETS = {"h2o": "ratio", "snapkv": "ratio", "pyramidkv": "ratio", "adakv": "ratio",
           "streaming": "ratio", "random": "ratio"}


def _policy(rng: random.Random) -> dict:
    if rng.random() < 0.6:
        spec: dict = {"name": "avl"}
        if rng.random() < 0.8:
            spec["S"] = rng.choice([20, 45, 70, 100])
            spec["C"] = rng.choice([c for c in (5, 10, 30, 45, 70, 100) if c <= spec["S"]])
            if rng.random() < 0.6:
                spec["K"] = rng.randint(1, 4)
        if rng.random() < 0.5:
            spec["P"] = rng.choice([p for p in (50, 90, 100) if p >= spec.get("S", 0)] or [100])
        if rng.random() < 0.5:
            spec["T"] = rng.choice([5, 30, 50, 100])
        return spec
    name = rng.choice([n for n in policies.names() if n in BUDGETS or n == "fastv"])
    spec = policies.example(name)
    if name in BUDGETS and BUDGETS[name] in spec:
        spec[BUDGETS[name]] = rng.choice([0.2, 0.5, 0.9])
    return spec


def _batch(processor, rng: random.Random):
    rows = [rng.randrange(len(ROWS)) for _ in range(rng.randint(1, 3))]
    if all(not ROWS[r][1] for r in rows):  # at least one image in the batch
        rows[0] = 0
    images, text = [], []
    for i, r in enumerate(rows):
        prompt, sizes = ROWS[r]
        images += [random_image(s, seed=10 * i + j) for j, s in enumerate(sizes)]
        text.append(prompt)
    return processor(images=images, text=text, return_tensors="pt", padding=True), rows


def _generate(model, inputs, spec, eos):
    kw = dict(max_new_tokens=NEW, do_sample=False, output_logits=True,
              return_dict_in_generate=True, eos_token_id=eos, pad_token_id=0)
    with avl_lab.attach(model, spec, record=True) as session:
        out = session.generate(**inputs, **kw)
        stats = session.stats
        own = model.generate(**inputs, **kw)  # the model's own generate, inside the block
    assert torch.equal(own.sequences, out.sequences) and session.stats == stats
    return out, session


@pytest.mark.parametrize("case", range(CASES))
def test_random_configurations_equal_the_masked_reference(llava, case):
    model, processor = llava
    rng = random.Random(case)
    spec, (inputs, rows) = _policy(rng), _batch(processor, rng)
    P = inputs["input_ids"].shape[1]
    first, _ = _generate(model, inputs, spec, eos=None)
    row, step = rng.randrange(len(rows)), rng.randrange(1, NEW)
    eos = int(first.sequences[row, P + step]) if rng.random() < 0.5 else None
    out, session = _generate(model, inputs, spec, eos)
    ref = masked_reference(model, inputs, session.last_run.trace, out.sequences.shape[1] - P)
    got = out.sequences[:, P:]
    for b in range(len(rows)):  # each row up to (and with) its own EOS
        n = got.shape[1]
        if eos is not None and (got[b] == eos).any():
            n = int((got[b] == eos).nonzero()[0]) + 1
        assert torch.equal(got[b, :n], ref.tokens[b, :n]), (spec, rows, eos, b)
        torch.testing.assert_close(torch.stack(out.logits).float()[:n, b], ref.logits[:n, b],
                                   atol=1e-4, rtol=0, msg=f"{spec} {rows} eos={eos} row {b}")
