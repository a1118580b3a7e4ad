"""Streaming metrics give the single-process answer after a real 2-process gloo sync."""

import os
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avl_lab.metrics import (
    ANLS,
    PPCI,
    CacheAccounting,
    CIDEr,
    OCRBenchScore,
    VQAAccuracy,
    anls,
    cider,
    ocrbench_score,
    ppci_rows,
    vqa_accuracy,
)

WORLD = 2


def _data():
    rng = random.Random(5)
    vocab = "red blue sign exit park stop open gate main street one two"
    words = vocab.split()
    preds = [" ".join(rng.sample(words, rng.randint(1, 3))) for _ in range(14)]
    refs = [
        [" ".join(rng.sample(words, rng.randint(1, 3))) for _ in range(5)] + [p] * (i % 4)
        for i, p in enumerate(preds)
    ]
    gen = torch.Generator().manual_seed(0)
    scores_a, scores_b = torch.rand(14, 32, generator=gen), torch.rand(14, 32, generator=gen)
    stored = torch.rand(14, generator=gen).tolist()
    used = [s * 0.5 for s in stored]
    return preds, refs, scores_a, scores_b, stored, used


def _metrics():
    return {
        "anls": ANLS(),
        "vqa": VQAAccuracy(),
        "ocr": OCRBenchScore(),
        "cider": CIDEr(tokenizer="python"),
        "ppci": PPCI(p=30),
        "cache": CacheAccounting(),
    }


def _feed(metrics, idx, preds, refs, a, b, stored, used):
    for i in idx:
        for key in ("anls", "vqa", "ocr", "cider"):
            metrics[key].update(preds[i], refs[i])
        metrics["ppci"].update(a[i], b[i])
        metrics["cache"].update(stored[i], used[i])


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    data = _data()
    metrics = _metrics()
    # uneven shards: rank 0 gets 9 samples, rank 1 gets 5
    idx = range(0, 9) if rank == 0 else range(9, 14)
    _feed(metrics, idx, *data)
    out = {k: m.compute() for k, m in metrics.items()}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _expected():
    preds, refs, a, b, stored, used = _data()
    n = len(preds)
    return {
        "anls": sum(anls(p, r) for p, r in zip(preds, refs)) / n,
        "vqa": sum(vqa_accuracy(p, r) for p, r in zip(preds, refs)) / n,
        "ocr": sum(ocrbench_score(p, r) for p, r in zip(preds, refs)) / n,
        "cider": cider(dict(enumerate(preds)), dict(enumerate(refs)), tokenizer="python"),
        "ppci": float(ppci_rows(a, b, 30).mean()),
        "stored": sum(stored) / n,
        "used": sum(used) / n,
    }


def _flatten(out):
    flat = {k: float(v) for k, v in out.items() if k != "cache"}
    flat.update({k: float(v) for k, v in out["cache"].items()})
    return flat


def test_single_process_matches_plain_functions():
    metrics = _metrics()
    _feed(metrics, range(14), *_data())
    got = _flatten({k: m.compute() for k, m in metrics.items()})
    assert got == pytest.approx(_expected(), abs=1e-9)


@pytest.mark.skipif(not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_process_sync_matches_single_process(tmp_path):
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"  # fork: no re-imports
    args = (str(tmp_path / "init"), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=WORLD, join=True, start_method=method)
    expected = _expected()
    for rank in range(WORLD):
        got = _flatten(torch.load(tmp_path / f"rank{rank}.pt"))
        assert got == pytest.approx(expected, abs=1e-9), f"rank {rank}"
