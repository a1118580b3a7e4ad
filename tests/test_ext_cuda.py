"""The CUDA op on the cases that reach each of its paths, and the engine's decode through it.

Every case names the path it is there for; :func:`split_plan` (the host code's plan in
``core_attention_cuda.cu``, transcribed) shows which path it takes on an H100 (132 SMs) and an
H100 PCIe / 114-SM part, and ``test_cases_reach_their_paths`` checks that on the CPU:

=======================================  ========  ===========  ========================
case (B, Hq, Hkv, N, D, active)          GT x ht   114 SMs      132 SMs
=======================================  ========  ===========  ========================
(8, 32, 32, 640, 128, pad:400)           1 x 1     2 x 200 (4)  3 x 134 (3)
(24, 32, 32, 300, 128, rand:200)         1 x 1     1 x 200 (4)  1 x 200 (4)
(2, 32, 2, 300, 128, rand:250)           8 x 2     8 x 32 (1)   8 x 32 (1)
(1, 32, 1, 300, 64, rand:250)            8 x 4     8 x 32 (1)   8 x 32 (1)
(2, 32, 8, 200, 256, pad:150)            4 x 1     5 x 30 (1)   5 x 30 (1)
=======================================  ========  ===========  ========================

(GT x ht: query heads per block x head tiles; SM columns: splits x rows per split (64-row
tiles per split).) So: several tiles per split, one split with n > 64, head tiles 2 and 4,
D = 256 with 4 query heads per kv head. CUDA cases skip without a GPU.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pytest
import torch

from avl_lab import ext
from avl_lab.ext import core_attention, core_attention_ref, op
from tests.test_ext_core_attention import TOL, make_case, make_head_case

# CUDA tests carry both marks: `pytest -m cuda` collects them, and they skip without a GPU
# (the CPU checks of this module run everywhere).
needs_cuda = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def cuda_test(fn):
    for mark in needs_cuda:
        fn = mark(fn)
    return fn

# Constants of core_attention_cuda.cu.
K_TILE, K_MIN_ROWS_PER_SPLIT, MAX_GRID = 64, 32, 65535


@dataclass(frozen=True)
class Plan:
    GT: int  # query heads per block
    head_tiles: int
    nsplit: int
    chunk: int  # active-index slots per split
    tiles: int  # 64-row tiles of the largest split (loop iterations of stage 1)
    batch_launches: int  # launches over batch chunks (1 unless B is beyond the grid)


def split_plan(B: int, Hq: int, Hkv: int, n: int, sms: int, P: int | None = 1) -> Plan:
    """``core_attention_cuda``'s launch plan, line by line (``P``: probability rows per batch
    row, 1 or Hkv; None when the probabilities are not wanted)."""
    G = Hq // Hkv
    GT = 8 if G > 4 else (4 if G > 2 else G)
    head_tiles = (G + GT - 1) // GT
    blocks = B * Hkv * head_tiles
    by_sms = (4 * sms + blocks - 1) // blocks
    by_rows = (n + K_MIN_ROWS_PER_SPLIT - 1) // K_MIN_ROWS_PER_SPLIT
    nsplit = max(1, min(by_sms, by_rows))
    chunk = (n + nsplit - 1) // nsplit
    nsplit = (n + chunk - 1) // chunk
    bchunk = MAX_GRID if P is None else MAX_GRID // P
    return Plan(GT, head_tiles, nsplit, chunk, math.ceil(chunk / K_TILE), math.ceil(B / bchunk))


# (B, Hq, Hkv, N, D, active), the path it is for, and how to tell from the plan.
CASES = [
    ((8, 32, 32, 640, 128, "pad:400"), "several tiles per split",
     lambda p: p.nsplit > 1 and p.tiles > 1),
    ((24, 32, 32, 300, 128, "rand:200"), "one split, n > 64",
     lambda p: p.nsplit == 1 and p.tiles > 1),
    ((2, 32, 2, 300, 128, "rand:250"), "head tiles 2", lambda p: p.head_tiles == 2),
    ((1, 32, 1, 300, 64, "rand:250"), "head tiles 4", lambda p: p.head_tiles == 4),
    ((2, 32, 8, 200, 256, "pad:150"), "D=256, GT=4", lambda p: p.GT == 4 and p.nsplit > 1),
]
CASE_IDS = ["tiles_per_split", "one_split_n_gt_64", "head_tiles_2", "head_tiles_4", "D256_GT4"]


def active_width(spec: str) -> int:
    return int(spec.partition(":")[2])


@pytest.mark.parametrize("sms", [114, 132])
@pytest.mark.parametrize("case,path,reaches", CASES, ids=CASE_IDS)
def test_cases_reach_their_paths(case, path, reaches, sms):
    B, Hq, Hkv, _, _, spec = case
    plan = split_plan(B, Hq, Hkv, active_width(spec), sms)
    assert reaches(plan), f"{case} does not reach '{path}' at {sms} SMs: {plan}"


def test_batch_chunks_lift_the_grid_limit():
    """Beyond 65535 batch rows (or B * Hkv probability rows) the op launches batch chunks."""
    assert split_plan(65535, 2, 1, 4, 132).batch_launches == 1
    assert split_plan(65536, 2, 1, 4, 132).batch_launches == 2
    assert split_plan(40000, 4, 2, 4, 132, P=2).batch_launches == 2  # B * P = 80000
    assert split_plan(40000, 4, 2, 4, 132, P=None).batch_launches == 1  # no probabilities


# --- CUDA -------------------------------------------------------------------------------------


def _check(q, k, v, a, per_head_probs=False):
    out, probs = core_attention(q, k, v, a, impl="cuda", per_head_probs=per_head_probs)
    ref_out, ref_probs = core_attention_ref(q, k, v, a, per_head_probs=per_head_probs)
    torch.testing.assert_close(out, ref_out, **TOL[q.dtype])
    torch.testing.assert_close(probs, ref_probs, atol=1e-6, rtol=1e-4)
    out2, none = core_attention(q, k, v, a, impl="cuda", want_probs=False)
    assert none is None
    torch.testing.assert_close(out2, ref_out, **TOL[q.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case,path,reaches", CASES, ids=CASE_IDS)
@cuda_test
@pytest.mark.usefixtures("cuda_device")
def test_cuda_paths_match_reference(case, path, reaches, dtype):
    q, k, v, a = make_case(*case, dtype, "cuda")
    _check(q, k, v, a)
    _check(q, k, v, a, per_head_probs=True)
    B, Hq, Hkv, N, D, _ = case  # the same shapes with rows per kv head
    qh, kh, vh, ah = make_head_case(B, Hkv, Hq // Hkv, N, D, f"heads:{a.shape[1]}", dtype, "cuda")
    _check(qh, kh, vh, ah)


@pytest.fixture
def cuda_device():
    """Fresh one-time warnings for the test."""
    saved = set(op._warned)
    op._warned.clear()
    yield torch.device("cuda")
    op._warned.clear()
    op._warned.update(saved)


def _in_buffer(t: torch.Tensor, offset: int, row_pad: int = 0) -> torch.Tensor:
    """``t``'s values in a larger buffer: ``offset`` elements in, rows ``D + row_pad`` apart."""
    B, H, N, D = t.shape
    buf = torch.zeros(offset + B * H * N * (D + row_pad), dtype=t.dtype, device=t.device)
    view = buf[offset:].view(B, H, N, D + row_pad)[..., :D]
    view.copy_(t)
    return view


@cuda_test
@pytest.mark.usefixtures("cuda_device")
def test_cuda_storage_offset_and_odd_strides():
    """An aligned offset is read in place; one element off (or an odd row stride) is copied,
    with one warning naming the strides and offset."""
    q, k, v, a = make_case(2, 8, 2, 300, 64, "pad:120", torch.float32, "cuda")
    k2, v2 = _in_buffer(k, 2), _in_buffer(v, 2)  # D/32 = 2 elements: still aligned
    assert k2.storage_offset() == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check(q, k2, v2, a)
    k1, v1 = _in_buffer(k, 1), _in_buffer(v, 1)
    with pytest.warns(RuntimeWarning, match="storage offset 1"):
        _check(q, k1, v1, a)
    op._warned.clear()
    ko, vo = _in_buffer(k, 0, row_pad=1), _in_buffer(v, 0, row_pad=1)  # row stride 65
    with pytest.warns(RuntimeWarning, match=r"strides \(\d+, \d+, 65, 1\)"):
        _check(q, ko, vo, a)


@cuda_test
@pytest.mark.usefixtures("cuda_device")
def test_cuda_runs_on_the_current_stream():
    q, k, v, a = make_case(8, 32, 32, 640, 128, "pad:400", torch.bfloat16, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out, probs = core_attention(q, k, v, a, impl="cuda")
    torch.cuda.current_stream().wait_stream(side)
    ref_out, ref_probs = core_attention_ref(q, k, v, a)
    torch.testing.assert_close(out, ref_out, **TOL[torch.bfloat16])
    torch.testing.assert_close(probs, ref_probs, atol=1e-6, rtol=1e-4)


@cuda_test
@pytest.mark.usefixtures("cuda_device")
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
def test_cuda_second_device():
    q, k, v, a = make_case(2, 32, 8, 200, 256, "pad:150", torch.float32, "cuda:1")
    _check(q, k, v, a)


@cuda_test
@pytest.mark.usefixtures("cuda_device")
def test_cuda_batch_beyond_the_grid():
    """B > 65535 and B * Hkv > 65535 probability rows: batch chunks, not an error."""
    q, k, v, a = make_case(65537, 2, 1, 4, 64, "full", torch.float32, "cuda")
    _check(q, k, v, a)
    q, k, v, a = make_case(33000, 4, 2, 6, 128, "rand:3", torch.float32, "cuda")
    _check(q, k, v, a, per_head_probs=True)  # probabilities kernel: grid.y = 66000 rows


# --- the engine's decode through the kernel ---------------------------------------------------

HEAD128 = dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=1,
               intermediate_size=256)  # head dim 128, a dim the kernel has


@pytest.mark.parametrize("name", ["avl", "h2o", "adakv"])
@pytest.mark.parametrize("device,dtype,atol", [
    ("cpu", torch.float32, 1e-3),  # the harness itself, with the CPU op
    pytest.param("cuda", torch.float32, 1e-3, marks=needs_cuda),
    pytest.param("cuda", torch.bfloat16, 5e-2, marks=needs_cuda),
], ids=["cpu-fp32", "cuda-fp32", "cuda-bf16"])
def test_engine_decode_through_the_op_equals_masked_reference(monkeypatch, name, device, dtype,
                                                              atol):
    """The engine's decode step with ``impl`` forced to the device's op (``"cuda"`` raises
    instead of falling back) gives the masked reference's tokens and logits."""
    from avl_lab import policies
    from avl_lab.ext.build import toolchain_problem
    from avl_lab.models import tiny_random
    from avl_lab.testing import masked_reference, run_policy
    from tests.helpers import make_inputs

    if device == "cpu" and toolchain_problem("cpu"):
        pytest.skip(f"CPU op: {toolchain_problem('cpu')}")
    model, processor = tiny_random("llava", seed=0, **HEAD128)
    model = model.to(device, dtype)
    inputs = make_inputs(processor, n=3).to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    calls = []
    dispatch = ext.dispatch

    def forced(*args, **kwargs):
        calls.append(args[0].shape[-1])
        return dispatch(*args, impl=device, **kwargs)

    monkeypatch.setattr(ext, "dispatch", forced)
    got, session = run_policy(model, inputs, policies.example(name), 8)
    monkeypatch.undo()
    assert calls and set(calls) == {128}
    ref = masked_reference(model, inputs, session.last_run.trace, 8)
    assert torch.equal(got.tokens, ref.tokens)
    torch.testing.assert_close(got.logits, ref.logits, atol=atol, rtol=0)
