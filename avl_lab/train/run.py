"""``train(cfg)``: build, fit (resumable), checkpoint, plot and export ``avl-tiny``."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from avl_lab.models.avl_tiny import build_avl_tiny
from avl_lab.models.quiet import quiet_loading
from avl_lab.train.callbacks import CurveLogger, GenerationEval, plot_curve
from avl_lab.train.config import TrainConfig
from avl_lab.train.data import TrainDataModule
from avl_lab.train.module import AvlTinyModule
from avl_lab.train.progress import StepProgress

__all__ = ["export", "train"]

log = logging.getLogger(__name__)


def export(module: AvlTinyModule, processor: Any, out: Path, extra: dict[str, Any]) -> Path:
    """``save_pretrained`` model (safetensors) + processor into ``out``, with a summary."""
    out.mkdir(parents=True, exist_ok=True)
    model = module.model.eval()
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.save_pretrained(out)
    processor.tokenizer.padding_side = "left"
    processor.save_pretrained(out)
    (out / "train_summary.json").write_text(json.dumps(extra, indent=2, default=str) + "\n")
    log.info("exported avl-tiny to %s", out)
    return out


def _export_checkpoint(
    cfg: TrainConfig, module: AvlTinyModule, processor: Any, ckpt: Path
) -> dict[str, Any]:
    if not ckpt.exists():
        raise FileNotFoundError(f"`export_only` needs a checkpoint, none at {ckpt}")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    # only ``model.`` is exported: a checkpoint from before a training-only probe was added exports
    missing, unexpected = module.load_state_dict(state["state_dict"], strict=False)
    wrong = [k for k in [*missing, *unexpected] if k.startswith("model.")]
    if wrong:
        raise RuntimeError(f"checkpoint {ckpt} does not fit the model: {wrong[:5]}")
    out = Path(cfg.out_dir)
    summary = {"steps": state["global_step"], "samples": state["global_step"] * cfg.batch_size,
               "checkpoint": str(ckpt), "config": dataclasses.asdict(cfg)}  # fmt: skip
    target = Path(cfg.export_dir) if cfg.export_dir else out / "export"
    export(module, processor, target, summary)
    if (out / "metrics.csv").exists():
        plot_curve(out / "metrics.csv", target / "training_curve.png")
        shutil.copy(out / "metrics.csv", target / "training_metrics.csv")
    return summary


#: State-dict key prefixes of the decoder that ``reinit_decoder`` leaves freshly initialised:
#: the transformer layers and the final norm (not the embeddings, the LM head, the vision
#: tower or the projector).
DECODER_PREFIXES = ("model.language_model.layers.", "model.language_model.norm.")


def _init_from(model: torch.nn.Module, path: Path, reinit_decoder: bool = False) -> None:
    """Load the weights of a saved ``avl-tiny`` (same sizes) into ``model``.

    With ``reinit_decoder`` the decoder's layers and final norm keep ``model``'s own (fresh,
    seeded) initialisation; everything else comes from ``path``.
    """
    from transformers import LlavaForConditionalGeneration

    if not (path / "config.json").exists():
        raise FileNotFoundError(f"`init_from`: no saved model (config.json) in {path}")
    with quiet_loading():
        saved = LlavaForConditionalGeneration.from_pretrained(path).state_dict()
    if reinit_decoder:
        fresh = model.state_dict()
        saved = {k: fresh[k] if k.startswith(DECODER_PREFIXES) and k in fresh else v
                 for k, v in saved.items()}  # fmt: skip
    try:
        model.load_state_dict(saved)
    except RuntimeError as err:
        raise ValueError(f"`init_from` {path} does not match the model config: {err}") from err
    log.info("initialised from %s%s", path, " (decoder re-initialised)" if reinit_decoder else "")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``avl-tiny`` as ``cfg`` says; returns a summary (steps, samples, wall time)."""
    torch.set_num_threads(cfg.num_threads)
    L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    model, processor = build_avl_tiny(cfg.model, seed=cfg.seed)
    if cfg.init_from:
        _init_from(model, cfg.init_path(), cfg.reinit_decoder)
    model.train()
    blank = processor.tokenizer(" ", add_special_tokens=False)["input_ids"]
    module = AvlTinyModule(model, cfg, blank_id=blank[0] if len(blank) == 1 else None)
    dm = TrainDataModule(cfg, processor)
    curve = CurveLogger(out, cfg.log_every_steps)
    callbacks = [
        curve,
        GenerationEval(curve, cfg.eval_samples, cfg.eval_every_steps, cfg.max_new_tokens),
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="step{step:06d}",
            save_last=True,
            save_top_k=1,
            train_time_interval=timedelta(minutes=cfg.ckpt_every_minutes),
            auto_insert_metric_name=False,
        ),
    ]
    if cfg.progress:
        callbacks.append(StepProgress())
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=cfg.max_steps,
        max_time=None if cfg.max_minutes is None else timedelta(minutes=cfg.max_minutes),
        gradient_clip_val=cfg.grad_clip,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,  # Lightning's bar counts batches of an endless epoch
        enable_model_summary=False,
        default_root_dir=str(out),
        deterministic=False,
    )
    last = ckpt_dir / "last.ckpt"
    if cfg.export_only:
        return _export_checkpoint(cfg, module, processor, last)
    ckpt_path = str(last) if cfg.resume and last.exists() else None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    t0 = time.monotonic()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    trainer.save_checkpoint(last)
    summary = {
        "steps": trainer.global_step,
        "samples": trainer.global_step * cfg.batch_size,
        "wall_s_this_run": round(time.monotonic() - t0, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "config": dataclasses.asdict(cfg),
    }
    if (out / "metrics.csv").exists():
        plot_curve(out / "metrics.csv", out / "curve.png")
    if cfg.export:
        target = Path(cfg.export_dir) if cfg.export_dir else out / "export"
        export(module, processor, target, summary)
        if (out / "curve.png").exists():
            shutil.copy(out / "curve.png", target / "training_curve.png")
            shutil.copy(out / "metrics.csv", target / "training_metrics.csv")
    return summary
