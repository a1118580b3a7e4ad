"""Real benchmarks with lmms-eval's dataset ids, schemas and default prompts, offline only.

========== ========================= ========== ===================== ================
name       hub id (lmms-eval)        split      source columns used   metric
========== ========================= ========== ===================== ================
docvqa     lmms-lab/DocVQA,          validation questionId question   anls
           config ``DocVQA``                    answers image
textvqa    lmms-lab/textvqa          validation question_id question  vqa_accuracy
                                                answers image
ocrbench   echo840/OCRBench          test       question answer       ocrbench
                                                dataset question_type
                                                image
nocaps     lmms-lab/NoCaps           validation image_id              cider
                                                annotations_captions
                                                image
flickr30k  lmms-lab/flickr30k        test       img_id caption image  cider
chartqa    lmms-lab/ChartQA          test       type question answer  relaxed_accuracy
                                                image
infovqa    lmms-lab/DocVQA,          validation questionId question   anls
           config ``InfographicVQA``            answers image
vqav2      lmms-lab/VQAv2            validation question_id question  vqa_accuracy
                                                answers (records
                                                with ``answer``)
                                                image
========== ========================= ========== ===================== ================

Prompts are lmms-eval's defaults: ``question + "\\nAnswer the question using a single word or
phrase."`` for DocVQA, InfoVQA and VQAv2 (TextVQA the same with ``question.capitalize()``),
ChartQA ``question + "\\nAnswer the question with a single word."``, OCRBench the stripped
question, NoCaps/Flickr30k ``"Provide a one-sentence caption for the provided image."``.
The definitions, with the lmms-eval task file each one follows, are in
:mod:`avl_lab.data.lmms_tasks`. (Newer lmms-eval reads the lmms-lab sets from
``lmms-lab-encoder/*``; both ids are searched.)

Nothing is downloaded. A copy is looked for, in order, at the ``path=`` argument, under
``$AVL_LAB_DATA_DIR`` (``<root>/<name>``, ``<root>/<hub id>`` or ``<root>/<owner>--<repo>``)
and in the local Hugging Face hub cache; it may be the hub repo's parquet files
(``<split>-*.parquet``, under ``<config>/`` where there is one) or a ``save_to_disk``
directory. Absent -> :class:`DatasetNotAvailableError` saying what to put where.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, Image, load_from_disk
from datasets.exceptions import DatasetsError
from datasets.table import InMemoryTable

from avl_lab.data.cache_dir import cache_root
from avl_lab.data.lmms_tasks import BENCHMARKS, Benchmark
from avl_lab.data.registry import register
from avl_lab.data.schema import COLUMNS, dump_meta
from avl_lab.errors import InputFileError

__all__ = ["BENCHMARKS", "Benchmark", "DatasetNotAvailableError", "load_benchmark"]

log = logging.getLogger(__name__)
DATA_DIR_ENV = "AVL_LAB_DATA_DIR"


class DatasetNotAvailableError(FileNotFoundError):
    """A real benchmark has no local copy (nothing is ever downloaded)."""


def _hub_snapshot(hub_id: str, cache_dir: str | Path | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        snap = snapshot_download(
            hub_id, repo_type="dataset", local_files_only=True, cache_dir=cache_dir
        )
        return Path(snap)
    except Exception:  # not in the cache (LocalEntryNotFoundError) or no hub client
        return None


def _candidates(b: Benchmark, path: str | Path | None, hub_cache: str | Path | None) -> list[Path]:
    if path is not None:
        return [Path(path).expanduser()]
    out: list[Path] = []
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        base = Path(root).expanduser()
        out.append(base / b.name)
        for hub_id in b.hub_ids:
            out += [base / hub_id, base / hub_id.replace("/", "--")]
    out += [p for h in b.hub_ids if (p := _hub_snapshot(h, hub_cache)) is not None]
    return out


def _sibling_configs(b: Benchmark) -> set[str]:
    """Configs of other benchmarks read from the same hub repo (docvqa and infovqa share one)."""
    return {
        o.config
        for o in BENCHMARKS.values()
        if o.config and o.config != b.config and set(o.hub_ids) & set(b.hub_ids)
    }


def _split_files(root: Path, b: Benchmark, split: str) -> list[Path]:
    base = root / b.config if b.config and (root / b.config).is_dir() else root
    # without its own config folder, never take another config's files for this benchmark's
    skip = _sibling_configs(b) if base == root else set()
    files = []
    for f in sorted(base.rglob("*.parquet")):
        stem, parents = f.stem, {p.name for p in f.relative_to(base).parents}
        if parents & skip:
            continue
        if stem == split or stem.startswith((f"{split}-", f"{split}_")) or split in parents:
            files.append(f)
    return files


def _read_parquet(files: list[Path], limit: int | None) -> Dataset:
    if limit is None:  # memory-mapped Arrow copy under our cache root, not ~/.cache/huggingface
        cache_dir = cache_root() / "parquet"
        return Dataset.from_parquet([str(f) for f in files], cache_dir=str(cache_dir))
    batches: list[pa.RecordBatch] = []
    schema = None
    remaining = limit
    for f in files:
        pf = pq.ParquetFile(f)
        schema = schema or pf.schema_arrow
        for batch in pf.iter_batches(batch_size=max(1, min(remaining, 256))):
            batches.append(batch.slice(0, remaining))
            remaining -= batches[-1].num_rows
            if remaining <= 0:
                break
        if remaining <= 0:
            break
    return Dataset(InMemoryTable(pa.Table.from_batches(batches, schema=schema)))


def _read_dir(root: Path, b: Benchmark, split: str, limit: int | None) -> Dataset | None:
    for d in ([root / b.config] if b.config else []) + [root]:
        if (d / "dataset_dict.json").is_file():
            dd = load_from_disk(str(d))
            if not isinstance(dd, DatasetDict) or split not in dd:
                raise InputFileError(f"{d} (save_to_disk) has no split {split!r}; it has {list(dd)}")
            ds = dd[split]
        elif (d / "state.json").is_file():
            ds = load_from_disk(str(d))
        else:
            continue
        return ds if limit is None else ds.select(range(min(limit, len(ds))))
    files = _split_files(root, b, split)
    return _read_parquet(files, limit) if files else None


def _hub_cache_dir(hub_cache: str | Path | None) -> str:
    if hub_cache is not None:
        return str(hub_cache)
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return "(huggingface_hub not installed)"


def _not_available(
    b: Benchmark, split: str, looked: list[Path], hub_cache: str | Path | None, explicit: bool
) -> DatasetNotAvailableError:
    cfg = f", config {b.config}" if b.config else ""
    sub = f"{b.config}/" if b.config else ""
    lines = [f"  - {p}{'' if p.is_dir() else ' (missing)'}" for p in looked]
    if not explicit:
        if not os.environ.get(DATA_DIR_ENV):
            lines.append(f"  - ${DATA_DIR_ENV} (not set)")
        ids = " or ".join(b.hub_ids)
        lines.append(
            f"  - Hugging Face hub cache {_hub_cache_dir(hub_cache)}: no snapshot of {ids}"
        )
    return DatasetNotAvailableError(
        f"benchmark {b.name!r} ({b.hub_ids[0]}{cfg}, split {split!r}) has no local copy; nothing "
        f"is downloaded. Looked in:\n" + "\n".join(lines) + "\nProvide it in one of these ways:\n"
        f"  1. avl_lab.data.load({b.name!r}, {split!r}, path='<dir>')\n"
        f"  2. export {DATA_DIR_ENV}=<root> with the files in <root>/{b.name}/ or "
        f"<root>/{b.hub_ids[0]}/\n"
        f"  3. the Hugging Face hub cache, e.g. on a machine with network: "
        f"`hf download "
        f"{b.hub_ids[0]} --repo-type dataset` and copy ~/.cache/huggingface/hub here\n"
        f"Layout: the hub repo's parquet files ({sub}{split}-*.parquet) or a Dataset/DatasetDict "
        f"save_to_disk directory, with lmms-eval's columns: {', '.join(b.columns)}."
    )


def _to_rows(ds: Dataset, b: Benchmark, where: Path) -> Dataset:
    missing = [c for c in b.columns if c not in ds.column_names]
    if missing:
        raise InputFileError(
            f"{b.name}: the copy at {where} lacks column(s) {missing} of lmms-eval's schema "
            f"({b.hub_ids[0]}); it has {ds.column_names}"
        )
    text = ds.remove_columns(["image"])
    mapped = [b.to_row(rec, i) for i, rec in enumerate(text.to_list())]
    images = ds.select_columns(["image"]).cast_column("image", Image(decode=False))
    # Rows without reference answers stay (an evaluation skips them and counts them, with the
    # reason, in its summary); `limit` counts the rows that have answers (see load_benchmark).
    cols = {"id": 0, "question": 1, "prompt": 2, "answers": 3}
    for name, j in cols.items():
        images = images.add_column(name, [m[j] for m in mapped])
    images = images.add_column("metric", [b.metric] * len(mapped))
    images = images.add_column("meta", [dump_meta(m[4]) for m in mapped])
    return images.select_columns(list(COLUMNS)).cast_column("image", Image())


def _first_answered(root: Path, b: Benchmark, split: str, ds: Dataset, limit: int | None) -> Dataset:
    """The rows up to the ``limit``-th with reference answers (those without stay, to be skipped
    and counted by the evaluation), reading further rows as long as some lack answers."""
    want = limit
    while True:
        rows = _to_rows(ds, b, root)
        has = [bool(a) for a in rows["answers"]]
        if limit is None or sum(has) >= limit or len(ds) < want:
            break
        want = want + 2 * (limit - sum(has))  # more rows, to make up for those without answers
        ds = _read_dir(root, b, split, want)
    if limit is not None and sum(has) > limit:
        cut = [i for i, h in enumerate(has) if h][limit - 1] + 1
        rows = rows.select(range(cut))
    return rows


def load_benchmark(
    name: str,
    split: str,
    limit: int | None = None,
    path: str | Path | None = None,
    hub_cache: str | Path | None = None,
) -> Dataset:
    """Load a real benchmark from a local copy, in the common row schema.

    Parameters
    ----------
    name : str
        A key of :data:`BENCHMARKS`.
    split : str
        Its lmms-eval split (``validation`` or ``test``).
    limit : int, optional
        First ``limit`` rows (read without converting the whole parquet set).
    path : str or Path, optional
        Directory of the local copy (see the module docstring); overrides the search.
    hub_cache : str or Path, optional
        Hugging Face hub cache directory to search (default: the hub's own default).

    Raises
    ------
    DatasetNotAvailableError
        No local copy was found.
    InputFileError
        The copy is malformed (unreadable files, a missing split, columns of lmms-eval's
        schema missing).
    """
    b = BENCHMARKS[name]
    looked = _candidates(b, path, hub_cache)
    for root in looked:
        if not root.is_dir():
            continue
        try:
            ds = _read_dir(root, b, split, limit)
        except (pa.ArrowException, OSError, json.JSONDecodeError, DatasetsError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputFileError(f"{name}: cannot read the copy at {root}: {first}") from None
        if ds is not None:
            log.info("%s: reading %s", name, root)
            return _first_answered(root, b, split, ds, limit)
    raise _not_available(b, split, looked, hub_cache, explicit=path is not None)


def _register(b: Benchmark) -> None:
    alias = {"eval": b.split, "val": b.split} if b.split == "validation" else {"eval": b.split}

    def loader(
        split: str,
        limit: int | None,
        path: str | Path | None = None,
        hub_cache: str | Path | None = None,
    ) -> Dataset:
        return load_benchmark(b.name, split, limit, path=path, hub_cache=hub_cache)

    loader.__doc__ = f"Rows of {b.description}; see :func:`load_benchmark`."
    register(
        b.name,
        metric=b.metric,
        splits=(b.split,),
        aliases=alias,
        kind="benchmark",
        description=b.description,
    )(loader)


for _b in BENCHMARKS.values():
    _register(_b)
