"""Seaborn figures of the attention analyses (one PNG each)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from avl_lab.evaluation.plotting import pyplot, save


def plot_modality(df: pd.DataFrame, path: Path) -> None:
    plt, sns = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=df, x="step", y="share", hue="modality", marker="o", ax=ax)
    ax.set(xlabel="decode step", ylabel="attention share (mean over layers, samples)",
           title="Fig 1: attention by token type during decode")
    save(fig, path)


def plot_sparsity(df: pd.DataFrame, heat: torch.Tensor, path: Path) -> None:
    plt, sns = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2]})
    sns.barplot(data=df, x="layer", y="fraction", ax=a, color="C0")
    a.set(ylabel="image-token fraction with 80% of attention",
          title="Fig 3: sparsity of vision attention")
    sns.heatmap(heat.numpy(), ax=b, cmap="viridis", cbar_kws={"label": "attention"})
    b.set(xlabel="image token", ylabel="layer", title="one sample's image attention per layer")
    save(fig, path)


def plot_layer_ppci(df: pd.DataFrame, path: Path) -> None:
    plt, sns = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=df, x="layer", y="ppci", hue="p", marker="o", palette="deep", ax=ax)
    ax.set(ylim=(0, 1.05), ylabel="p% PPCI vs layer 0", title="Fig 4: heterogeneity across layers")
    save(fig, path)


def plot_step_ppci(df: pd.DataFrame, path: Path) -> None:
    plt, sns = pyplot()
    ps = sorted(df["p"].unique())
    fig, axes = plt.subplots(1, len(ps), figsize=(6 * len(ps), 4), squeeze=False)
    for ax, p in zip(axes[0], ps, strict=True):
        sns.lineplot(data=df[df["p"] == p], x="step", y="ppci", hue="layer", palette="viridis",
                     ax=ax)
        ax.set(ylim=(0, 1.05), ylabel=f"{p}% PPCI vs step 0",
               title=f"Fig 5: continuity across decode steps (p={p})")
    save(fig, path)


def plot_coverage(df: pd.DataFrame, path: Path, S: int = 45) -> None:
    """Per signal and layer: coverage of the head average (left) and of the best KV head
    (right), top S%."""
    plt, sns = pyplot()
    sub = df[df["S"] == S]
    rand = float(sub["random"].mean())
    per_head = sub.groupby(["signal", "layer", "head"], sort=False)["coverage"].mean().reset_index()
    signals = list(dict.fromkeys(sub["signal"]))
    mean = per_head[per_head["head"] == "mean"].pivot(index="signal", columns="layer", values="coverage")
    best = per_head[per_head["head"] != "mean"].groupby(["signal", "layer"])["coverage"].max().unstack()
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.6 * len(signals) + 2))
    for ax, table, title in ((axes[0], mean, "head average (what A-VL ranks by)"),
                             (axes[1], best, "best single KV head")):
        sns.heatmap(table.loc[signals], ax=ax, annot=True, fmt=".2f", cmap="RdBu", center=rand,
                    vmin=0, vmax=1, cbar_kws={"label": f"answer tokens in the top {S}%"})
        ax.set(title=f"coverage, {title} (random: {rand:.2f})")
    save(fig, path)


def plot_drift(df: pd.DataFrame, path: Path, p: int = 10) -> None:
    """Per layer: p% PPCI vs the last prompt token (top) and the share of image attention on
    the answer's tokens (bottom, when known), per head and for the head average (dashed)."""
    plt, sns = pyplot()
    sub = df[df["p"] == p]
    layers = sorted(sub["layer"].unique())
    panels = [("ppci", f"{p}% PPCI vs last prompt token")]
    if sub["answer_share"].notna().any():
        panels.append(("answer_share", "image attention on the answer"))
    fig, axes = plt.subplots(len(panels), len(layers), figsize=(4.2 * len(layers), 3.4 * len(panels)),
                             squeeze=False, sharey="row")
    for row, (value, label) in enumerate(panels):
        for col, layer in enumerate(layers):
            ax = axes[row][col]
            d = sub[sub["layer"] == layer]
            sns.lineplot(data=d[d["head"] != "mean"], x="step", y=value, hue="head", ax=ax,
                         palette="tab10", errorbar=None, legend=(row, col) == (0, len(layers) - 1))
            sns.lineplot(data=d[d["head"] == "mean"], x="step", y=value, ax=ax, color="black",
                         linestyle="--", errorbar=None)
            ax.set(ylim=(0, 1.05), title=f"layer {layer}", ylabel=label)
    fig.suptitle("drift: each decode step's image attention per head (dashed: head average)")
    save(fig, path)
