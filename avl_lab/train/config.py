"""Training configuration of ``avl-tiny``: typed dataclasses, OmegaConf dotlist overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from avl_lab.models.avl_tiny import AvlTinyConfig

__all__ = ["TASKS", "TrainConfig", "load_train_config"]

#: Training tasks, in the order of ``TrainConfig.task_weights``.
TASKS = ("synth-docvqa", "synth-textvqa", "synth-ocr", "synth-caption", "easy-vqa")


@dataclass
class TrainConfig:
    """Everything ``python -m avl_lab.train`` takes (override with ``key=value``)."""

    out_dir: str = "runs/train/avl-tiny"
    """Run directory: checkpoints, ``metrics.csv``, ``curve.png``, ``export/``."""
    export_dir: str | None = None
    """Where the final ``save_pretrained`` goes (``<out_dir>/export`` when null)."""
    model: AvlTinyConfig = field(default_factory=AvlTinyConfig)
    """Model sizes (see :class:`avl_lab.models.avl_tiny.AvlTinyConfig`)."""
    seed: int = 0
    """Seeds the weights, the data stream and Lightning (``seed_everything``)."""
    batch_size: int = 8
    """Samples per optimiser step."""
    max_steps: int = 2000
    """Optimiser steps (the cosine decays over this or ``max_minutes``, whichever binds)."""
    max_minutes: float | None = None
    """Stop after this much training wall time in total (kept across resumes); null: no limit."""
    lr: float = 1.5e-3
    """Peak AdamW learning rate."""
    min_lr_ratio: float = 0.05
    """Final learning rate as a fraction of ``lr``."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.05
    """AdamW weight decay (matrices only)."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """Training tasks (dataset names with a train split): :data:`TASKS` by default; e.g.
    ``tasks=[synth-docvqa-2x2] task_weights=[1]`` for the premise variant (issue 19)."""
    task_weights: list[float] = field(default_factory=lambda: [0.3, 0.2, 0.25, 0.15, 0.1])
    """Sampling weights of ``tasks`` (default: docvqa, textvqa, ocr, caption, easy-vqa)."""
    glyph_loss_weight: float = 1.0
    """Weight of the auxiliary glyph loss: each image token (projector output), scored
    against the input embeddings, must name the character its grid cell shows (blank: the
    space token). It aligns the vision tokens with the character tokens the answers copy,
    LLaVA stage-1 style; 0 turns it off."""
    read_attention_weight: float = 1.0
    """Weight of the guided-reading loss: on reading tasks, head ``read_attention_head`` of
    decoder layer ``read_attention_layer`` is taught to attend, from the position that
    predicts the answer's k-th character, to the image token of the cell showing it
    (cross-entropy of that head's attention row, see :mod:`avl_lab.train.guided`); 0 turns
    it off."""
    read_attention_layer: int = 1
    """Decoder layer of the guided head."""
    read_attention_head: int = 0
    """Query head of the guided head."""
    slot_attention_weight: float = 1.0
    """Weight of the slot loss: on easy-vqa, head ``slot_attention_head`` of decoder layer
    ``slot_attention_layer`` is taught to compare: to attend, from the answer positions, to
    the question's colour or shape word ("is there a *red* shape?") if and only if the image
    shows it (``-log`` of that attention mass, or of one minus it). Its query can see the
    shape (the guided head, an earlier layer, brought it there), its keys the words, so the
    comparison is one dot product. A linear probe held by the training module (not exported)
    must also read the verdict off that layer's output at those positions (binary
    cross-entropy, same weight), so the next layer can use it; 0 turns both off."""
    slot_attention_layer: int = 2
    """Decoder layer of the slot head (after the guided head's layer)."""
    slot_attention_head: int = 3
    """Query head of the slot head."""
    scene_loss_weight: float = 1.0
    """Weight of the auxiliary scene loss: on easy-vqa, the mean of the image tokens
    (projector outputs) of the patches the shape covers must give the shape's colour and kind
    through a linear probe that the training module holds (it is not exported); labels come
    from the pixels (:mod:`avl_lab.train.scene`). The guided head is also taught to attend to
    those tokens from the answer positions (weighted by ``read_attention_weight``). 0 turns
    the probe off."""
    easy_vqa_generated: float = 0.5
    """Probability that an easy-vqa training sample asks a generated question (easy-vqa's
    templates, yes/no balanced, answered from the pixels; :mod:`avl_lab.train.easy_questions`)
    instead of the package's question about that image."""
    glyph_blank_weight: float = 0.2
    """Weight of the blank cells' mean glyph loss relative to the character cells' mean."""
    init_from: str | None = None
    """A saved ``avl-tiny`` directory whose weights start a fresh run (null: random init);
    a name the model loader knows (``avl-tiny-guided``) is its shipped assets folder."""
    reinit_decoder: bool = False
    """With ``init_from``: keep only its embeddings, LM head, vision tower and projector; the
    decoder's layers and final norm start from a fresh (seeded) initialisation."""
    curriculum_steps: int = 300
    """For this many steps docvqa has fewer fields (2-4) and ocr 1-2 tokens."""
    ckpt_every_minutes: float = 5.0
    """Write ``last.ckpt`` this often (wall time)."""
    eval_every_steps: int = 250
    """Greedy-generation evaluation on a fixed eval set every this many steps (0 = off)."""
    eval_samples: int = 8
    """Eval samples per task for the in-training evaluation."""
    max_new_tokens: int = 32
    """Generation length of the in-training evaluation."""
    log_every_steps: int = 10
    """Loss logging interval."""
    num_threads: int = 2
    """``torch.set_num_threads``."""
    resume: bool = True
    """Resume from ``<out_dir>/checkpoints/last.ckpt`` if it exists."""
    export: bool = True
    """Save the trained model + processor (``save_pretrained``) at the end."""
    export_only: bool = False
    """Do not train: export ``<out_dir>/checkpoints/last.ckpt`` (e.g. a run still going)."""
    progress: bool = True
    """Show a progress bar over the optimiser steps, with the loss (`--no-progress` hides it)."""

    def init_path(self) -> Path | None:
        """``init_from`` as a directory: a shipped model's name (``avl-tiny-guided``) is its
        assets folder unless a directory of that name exists here."""
        if not self.init_from:
            return None
        path = Path(self.init_from)
        from avl_lab.models.loader import SHIPPED, embedded_path

        return embedded_path(self.init_from) if self.init_from in SHIPPED and not path.exists() else path

    def __post_init__(self) -> None:
        if len(self.task_weights) != len(self.tasks) or min(self.task_weights) < 0:
            raise ValueError(
                f"`task_weights` must be {len(self.tasks)} non-negative weights for "
                f"{tuple(self.tasks)}"
            )
        bad = [t for t in self.tasks if t != "easy-vqa" and not t.startswith("synth-")]
        if bad:
            raise ValueError(f"`tasks`: {bad} cannot be trained on (synth-* tasks and easy-vqa)")
        if sum(self.task_weights) <= 0:
            raise ValueError("`task_weights` must not all be zero")
        for name in ("batch_size", "max_steps", "num_threads", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise ValueError(f"`lr` must be in (0, 1), got {self.lr}")
        if self.read_attention_weight < 0:
            raise ValueError(
                f"`read_attention_weight` must be >= 0, got {self.read_attention_weight}"
            )
        self._check_heads()
        for name in ("glyph_loss_weight", "scene_loss_weight", "slot_attention_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.easy_vqa_generated <= 1:
            raise ValueError(
                f"`easy_vqa_generated` must be in [0, 1], got {self.easy_vqa_generated}"
            )
        if self.reinit_decoder and not self.init_from:
            raise ValueError("`reinit_decoder=true` needs `init_from`")
        if self.warmup_steps < 0 or self.eval_every_steps < 0 or self.curriculum_steps < 0:
            raise ValueError("`warmup_steps`, `eval_every_steps`, `curriculum_steps` must be >= 0")


    def _check_heads(self) -> None:
        """The guided and slot heads exist in the model and are two different heads."""
        for kind in ("read", "slot"):
            layer, head = f"{kind}_attention_layer", f"{kind}_attention_head"
            if not 0 <= getattr(self, layer) < self.model.num_hidden_layers:
                raise ValueError(
                    f"`{layer}` must be in [0, {self.model.num_hidden_layers}), "
                    f"got {getattr(self, layer)}"
                )
            if not 0 <= getattr(self, head) < self.model.num_attention_heads:
                raise ValueError(
                    f"`{head}` must be in [0, {self.model.num_attention_heads}), "
                    f"got {getattr(self, head)}"
                )
        slot = (self.slot_attention_layer, self.slot_attention_head)
        if slot == (self.read_attention_layer, self.read_attention_head):
            raise ValueError(
                "`slot_attention_head` must differ from `read_attention_head` in the same "
                "layer: one head cannot attend to both the shape and the question's word"
            )

def load_train_config(overrides: list[str] | None = None) -> TrainConfig:
    """:class:`TrainConfig` with ``key=value`` dotlist overrides merged and validated.

    Raises
    ------
    ConfigError
        Unknown key, wrong type or invalid value; the message names the key.
    """
    from avl_lab.cli.loader import load_structured

    return load_structured(TrainConfig, list(overrides or []))
