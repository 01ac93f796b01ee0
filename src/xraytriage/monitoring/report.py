# ruff: noqa: E501  (HTML template strings read better unbroken)
"""``monitor``'s outputs from a :class:`MonitorResult`: monitor.json, monitor_checks.csv, an offline
report.html (inline CSS, figures as base64 PNG, no scripts) and TensorBoard scalars per window."""

from __future__ import annotations

import dataclasses
import html
import json
import shutil
from pathlib import Path

import pandas as pd

from xraytriage.evaluation.plots import figure_to_base64_png, new_figure
from xraytriage.monitoring.results import ALERT, MEASURES, MonitorResult
from xraytriage.monitoring.windows import ALL, UNKNOWN_WINDOW, window_start
from xraytriage.utils.atomic import atomic_path, atomic_write_text
from xraytriage.utils.csv_safety import safe_frame

MAX_GROUP_LINES = 8  # lines per plot: the groups with most scans

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}th,td{border:1px solid #ccc;padding:.2em .45em;text-align:left}
th{background:#f3f3f3}.alert{background:#fce8e6}.ok{background:#e6f4ea;border:1px solid #34a853;padding:.6em 1em}
.fail{background:#fce8e6;border:1px solid #d93025;padding:.6em 1em}.note{color:#555;font-size:.88em}img{max-width:100%}
"""


def checks_frame(result: MonitorResult) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.asdict(c) for c in result.checks])


def write_json(result: MonitorResult, out: Path) -> Path:
    target = out / "monitor.json"
    atomic_write_text(target, json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    return target


def write_checks_csv(result: MonitorResult, out: Path) -> Path:
    target = out / "monitor_checks.csv"
    with atomic_path(target) as tmp:
        safe_frame(checks_frame(result)).to_csv(tmp, index=False, float_format="%.6g")
    return target


def _over_time_figure(frame: pd.DataFrame, title: str, limit_line: float | None) -> str | None:
    """Value per dated window, one line per group (with its interval band when there is one)."""
    dated = frame[~frame["window"].isin([ALL, UNKNOWN_WINDOW])]
    if dated.empty or dated["value"].notna().sum() == 0:
        return None
    fig = new_figure(7.5, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    sizes = dated.groupby(["attribute", "group"])["n"].sum().sort_values(ascending=False)
    for attribute, group in list(sizes.index)[:MAX_GROUP_LINES]:
        rows = dated[(dated["attribute"] == attribute) & (dated["group"] == group)]
        x = [window_start(w) for w in rows["window"]]
        name = "all scans" if attribute == ALL else f"{attribute}={group}"
        line = ax.plot(x, rows["value"], marker="o", label=name, linewidth=2.2 if attribute == ALL else 1.0)
        if rows["value_low"].notna().any() and rows["measure"].iloc[0] != "probability_shift":
            ax.fill_between(
                x,
                rows["value_low"].astype(float),
                rows["value_high"].astype(float),
                alpha=0.12,
                color=line[0].get_color(),
            )
        alerts = rows[rows["verdict"] == ALERT]
        ax.scatter(
            [window_start(w) for w in alerts["window"]],
            alerts["value"],
            s=120,
            facecolors="none",
            edgecolors="red",
            zorder=5,
        )
    if limit_line is not None:
        ax.axhline(
            limit_line,
            color="grey",
            linestyle="--",
            linewidth=1,
            label="validation" if "rate" in title else "limit",
        )
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return figure_to_base64_png(fig)


def _figures(result: MonitorResult, frame: pd.DataFrame) -> list[tuple[str, str]]:
    out = []
    for (measure, label), rows in frame.groupby(["measure", "label"], sort=False):
        reference = rows["reference"].dropna()
        line = (
            result.settings["psi_limit"]
            if measure.endswith("shift")
            else (reference.iloc[0] if len(reference) else None)
        )
        title = measure.replace("_", " ") + (f" — {label}" if label else "")
        png = _over_time_figure(rows, title, line)
        if png:
            out.append((title, png))
    return out


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _n(value: object) -> str:
    return "—" if value is None or pd.isna(value) else f"{float(value):.3f}"


def _check_rows(frame: pd.DataFrame) -> str:
    rows = []
    for r in frame.itertuples():
        interval = (
            f" [{_n(r.value_low)}, {_n(r.value_high)}]"
            if r.measure not in ("probability_shift", "ood_shift") and pd.notna(r.value_low)
            else ""
        )
        cls = ' class="alert"' if r.verdict == ALERT else ""
        rows.append(
            f"<tr{cls}><td>{_e(r.window)}</td><td>{_e('all scans' if r.attribute == ALL else f'{r.attribute}={r.group}')}</td>"
            f"<td>{_e(r.label)}</td><td>{_e(r.measure)}</td><td>{r.n}</td><td>{_n(r.value)}{interval}</td>"
            f"<td>{_n(r.reference)}</td><td>{_n(r.q_value)}</td><td>{_e(r.verdict)}</td><td>{_e(r.why)}</td></tr>"
        )
    head = "<tr><th>window</th><th>group</th><th>label</th><th>measure</th><th>n</th><th>value [interval]</th><th>validation</th><th>q</th><th>verdict</th><th>why</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def write_html(result: MonitorResult, out: Path) -> Path:
    frame = checks_frame(result)
    alerts = result.alerts
    banner = (
        f'<p class="fail"><b>{len(alerts)} alert(s)</b>: '
        + "; ".join(_e(f"{a.what}, {a.where}") for a in alerts[:10])
        + "</p>"
        if alerts
        else f'<p class="ok">No alert: {result.tests} checks, none both real (BH at {result.false_alert_rate:g}) and beyond its limit.</p>'
    )
    figures = "".join(
        f"<h3>{_e(t)}</h3><img alt='{_e(t)}' src='data:image/png;base64,{png}'>"
        for t, png in _figures(result, frame)
    )
    shown = frame[frame["verdict"] != "cannot tell"] if len(frame) > 400 else frame
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>xraytriage monitor — {_e(result.model_id)}</title><style>{_CSS}</style></head><body>
<h1>Deployment monitor</h1>
<p>Model <code>{_e(result.model_id)}</code>; {result.scans} scans from {len(result.files)} file(s) ({result.duplicates_dropped} repeated rows dropped); validation reference {result.reference_scans} scans; windows by {_e(result.window)}; groups by {_e(", ".join(result.by) or "none")}.</p>
{banner}
<h2>Measures</h2><ul>{"".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in MEASURES.items())}</ul>
<p class="note">Assumptions: {"; ".join(_e(a) for a in result.assumptions)}.</p>
{"<h2>Warnings</h2><ul>" + "".join(f"<li>{_e(w)}</li>" for w in result.warnings) + "</ul>" if result.warnings else ""}
<h2>Over time</h2><p class="note">Red circles: alerts. Dashed line: the validation figure (rates) or the PSI limit (shifts).</p>{figures}
<h2>Every check</h2>{_check_rows(shown)}
</body></html>"""
    target = out / "report.html"
    atomic_write_text(target, body)
    return target


def write_tensorboard(result: MonitorResult, out: Path) -> Path:
    """One scalar per dated window and check: tag ``measure/label/group``, step = window number, wall
    time = the window's first day. The folder is rewritten each run (event files only append)."""
    from torch.utils.tensorboard import SummaryWriter

    folder = out / "tensorboard"
    shutil.rmtree(folder, ignore_errors=True)
    windows = sorted({c.window for c in result.checks} - {ALL, UNKNOWN_WINDOW})
    step = {w: i for i, w in enumerate(windows)}
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for c in result.checks:
            if c.window in step and c.value is not None:
                group = "all" if c.attribute == ALL else f"{c.attribute}={c.group}"
                start = window_start(c.window)
                writer.add_scalar(
                    f"{c.measure}/{c.label or 'scans'}/{group}",
                    c.value,
                    step[c.window],
                    walltime=start.timestamp() if start is not None else None,
                )
    finally:
        writer.close()
    return folder


def write_outputs(result: MonitorResult, out: Path, tensorboard: bool = True) -> list[Path]:
    written = [write_json(result, out), write_checks_csv(result, out), write_html(result, out)]
    if tensorboard:
        written.append(write_tensorboard(result, out))
    return written
