"""Figures for the report and TensorBoard (matplotlib, Agg backend: works headless and offline)."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def new_figure(width: float, height: float):
    """A figure detached from pyplot's global state (safe in threads, nothing to close)."""
    from matplotlib.figure import Figure

    _plt()
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def figure_to_base64_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def roc_pr_figure(y: np.ndarray, prob: np.ndarray, threshold: float, label: str, point: dict[str, Any]):
    """ROC and precision-recall curves with the operating point marked."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig = new_figure(9.0, 4.0)
    ax_roc, ax_pr = fig.subplots(1, 2)
    y_int = (y == 1).astype(int)
    if 0 < y_int.sum() < y_int.size:
        fpr, tpr, _ = roc_curve(y_int, prob)
        ax_roc.plot(fpr, tpr, color="C0", lw=1.5, label=f"AUROC {point.get('auroc') or float('nan'):.3f}")
        precision, recall, _ = precision_recall_curve(y_int, prob)
        ax_pr.step(
            recall,
            precision,
            where="post",
            color="C0",
            lw=1.5,
            label=f"AP {point.get('auprc') or float('nan'):.3f}",
        )
        ax_pr.axhline(y_int.mean(), color="grey", ls=":", lw=1, label=f"prevalence {y_int.mean():.3f}")
        sens, fpr_pt, ppv = point.get("sensitivity"), point.get("fpr"), point.get("ppv")
        if sens is not None and fpr_pt is not None:
            ax_roc.plot([fpr_pt], [sens], "o", color="C3", ms=8, label=f"threshold {threshold:.3f}")
        if sens is not None and ppv is not None:
            ax_pr.plot([sens], [ppv], "o", color="C3", ms=8, label=f"threshold {threshold:.3f}")
    else:
        for ax in (ax_roc, ax_pr):
            ax.text(0.5, 0.5, "insufficient data:\nneeds both classes", ha="center", va="center")
    ax_roc.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax_roc.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity", title=f"ROC — {label}")
    ax_pr.set(xlabel="sensitivity (recall)", ylabel="PPV (precision)", title=f"Precision-recall — {label}")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
    return fig


def calibration_figure(curve: pd.DataFrame, label: str, ece: float | None):
    """Reliability diagram: observed rate against mean predicted probability per bin, with counts."""
    fig = new_figure(4.5, 4.5)
    ax = fig.subplots()
    used = curve[curve["count"] > 0]
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    ax.plot(used["mean_prob"], used["observed_rate"], "o-", color="C0", label="model")
    for _, row in used.iterrows():
        ax.annotate(
            str(int(row["count"])),
            (row["mean_prob"], row["observed_rate"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, -10),
        )
    ece_txt = f"ECE {ece:.3f}" if ece is not None else "ECE n/a"
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean predicted probability",
        ylabel="observed positive rate",
        title=f"Calibration — {label} ({ece_txt})",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def subgroup_figure(table: pd.DataFrame, label: str, overall: float | None, threshold: float):
    """Per-group sensitivity with interval bars; insufficient groups are listed, not hidden."""
    rows = table[(table["label"] == label) & (table["group"] != "")].reset_index(drop=True)
    height = max(2.5, 0.28 * len(rows) + 1.2)
    fig = new_figure(8.0, height)
    ax = fig.subplots()
    ys = np.arange(len(rows))[::-1]
    for y, (_, row) in zip(ys, rows.iterrows()):
        if row["status"] == "ok" and row["sensitivity"] is not None and pd.notna(row["sensitivity"]):
            lo, hi = row["sensitivity_ci_low"], row["sensitivity_ci_high"]
            if lo is not None and pd.notna(lo):
                ax.plot([lo, hi], [y, y], color="C0", lw=2)
            worst = row.get("is_worst")
            is_worst = worst is not None and pd.notna(worst) and bool(worst)
            ax.plot([row["sensitivity"]], [y], "o", color="C3" if is_worst else "C0")
        else:
            ax.text(0.02, y, "insufficient data", va="center", fontsize=8, color="grey")
    if overall is not None:
        ax.axvline(overall, color="grey", ls="--", lw=1, label=f"overall {overall:.3f}")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{g} (n={int(n)})" for g, n in zip(rows["group"], rows["n"])], fontsize=8)
    ax.set(
        xlim=(0, 1.01),
        xlabel=f"sensitivity at threshold {threshold:.3f} (bar: interval)",
        title=f"Sensitivity by subgroup — {label}",
    )
    ax.grid(axis="x", alpha=0.3)
    return fig
