# ruff: noqa: E501  (HTML template strings read better unbroken)
"""Self-contained ``report.html``: inline CSS, figures as base64 PNG, no scripts, no external assets.

Everything user-provided (labels, group values, model id) is HTML-escaped.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from xraytriage.evaluation.plots import figure_to_base64_png
from xraytriage.evaluation.results import (
    CANNOT_CERTIFY,
    FAIL,
    NO_LIMITS,
    PASS,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    AttributeResult,
    ClassResult,
    Estimate,
    EvaluationResult,
    GroupRow,
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f3f3f3}
td.t,th.t{text-align:left}.insufficient{color:#888;font-style:italic}
.pass{background:#e6f4ea;border:1px solid #34a853;padding:.6em 1em}
.fail{background:#fce8e6;border:1px solid #d93025;padding:.6em 1em}
.warn{background:#fef7e0;border:1px solid #f9ab00;padding:.6em 1em}
.note{color:#555;font-size:.88em}img{max-width:100%;height:auto}
.worst{background:#fce8e6}
"""

_NAMES = {
    "sensitivity": "Sensitivity (TPR)",
    "miss_rate": "Miss rate (FNR)",
    "specificity": "Specificity (TNR)",
    "fpr": "False-positive rate",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "f1": "F1",
    "accuracy": "Accuracy",
    "prevalence": "Prevalence",
    "auroc": "AUROC",
    "auprc": "AUPRC (average precision)",
    "brier": "Brier score",
    "ece": "Expected calibration error",
}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, (bool,)):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


def _ci(stat: Estimate | None, digits: int = 3) -> str:
    if stat is None or stat.value is None:
        return '<span class="insufficient">undefined</span>'
    text = stat.text(digits)
    if stat.note:
        text += f' <span class="note">({_e(stat.note)})</span>'
    return text


def _img(fig: Any, alt: str) -> str:
    if fig is None:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{figure_to_base64_png(fig)}">'


def _frame_table(frame: pd.DataFrame, max_rows: int = 400) -> str:
    if frame is None or frame.empty:
        return '<p class="note">(no rows)</p>'
    head = "".join(f'<th class="t">{_e(c)}</th>' for c in frame.columns)
    body = []
    for _, row in frame.head(max_rows).iterrows():
        cells = []
        for value in row:
            if isinstance(value, str):
                cells.append(f'<td class="t">{_e(value)}</td>')
            elif isinstance(value, float) and not float(value).is_integer():
                cells.append(f"<td>{_num(value)}</td>")
            else:
                cells.append(f"<td>{_e(_num(value) if value is None or pd.isna(value) else value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (
        f'<p class="note">{len(frame) - max_rows} more rows in the CSV/JSON outputs.</p>'
        if len(frame) > max_rows
        else ""
    )
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


_VERDICT_CLASS = {PASS: "pass", FAIL: "fail", CANNOT_CERTIFY: "warn", NO_LIMITS: "warn"}


def _operating_point(block: ClassResult, pct: str) -> str:
    op = block.operating_point
    c = block.counts
    parts = [
        f"<p>Operating point: <b>threshold {op.threshold:.4f}</b> (source: {_e(block.threshold_source)}); "
        f"a scan is flagged positive when its probability is at or above it. "
        f"{c.n} scans with a known label ({c.positives} positive); {c.excluded} uncertain/unknown left out.</p>"
    ]
    if op.fallback:
        parts.append(f'<p class="warn"><b>Fallback threshold</b>: {_e(op.fallback_reason)}</p>')
    elif op.metric and op.lower_bound is not None:
        cls = "pass" if op.guaranteed else "warn"
        parts.append(
            f'<p class="{cls}">Operating-point guarantee ({_e(op.rule)} rule): validation {op.metric} '
            f"{_num(op.validation_value)} on {op.validation_cases} scans from {op.validation_patients} patients; "
            f"one-sided {op.confidence * 100:g}% lower bound <b>{_num(op.lower_bound)}</b> "
            f"{'reaches' if op.guaranteed else 'does not reach'} the target {op.target:g}.</p>"
        )
    tc = block.target_check
    if tc:
        held = tc.held
        cls = "pass" if tc.held_at_ci_low else ("warn" if held else "fail")
        verdict = (
            "held, and the whole interval is at or above the target"
            if tc.held_at_ci_low
            else (
                "held by the point estimate, but the interval reaches below the target"
                if held
                else "NOT held"
            )
        )
        parts.append(
            f'<p class="{cls}">Promised {tc.metric} {tc.target:.3f}: validation {_num(tc.validation)}, '
            f"test {tc.test.text()} ({pct} CI) — {verdict}.</p>"
        )
    return "\n".join(parts)


def _metrics_tables(block: ClassResult, pct: str) -> str:
    rows = "".join(
        f'<tr><td class="t">{_e(_NAMES.get(k, k))}</td><td>{_ci(v)}</td><td class="t">{_e(v.method)}</td></tr>'
        for k, v in block.metrics.items()
    )
    parts = [
        f"<h3>Metrics at the operating point ({pct} CI)</h3><table><tr><th class='t'>metric</th><th>test</th>"
        f"<th class='t'>interval method</th></tr>{rows}</table>"
    ]
    val = block.validation
    if val:
        vrows = "".join(
            f'<tr><td class="t">{_e(_NAMES[k])}</td><td>{_ci(val.metrics[k])}</td><td>{_ci(block.metrics[k])}</td></tr>'
            for k in val.metrics
        )
        parts.append(
            f"<h3>Validation vs test at the same threshold</h3><table><tr><th class='t'>metric</th>"
            f"<th>validation (n={val.n}, {val.positives} pos.)</th><th>test</th></tr>{vrows}</table>"
        )
    c = block.counts
    parts.append(
        "<h3>Confusion matrix (counts)</h3><table><tr><th></th><th>predicted positive</th><th>predicted negative</th></tr>"
        f"<tr><th class='t'>truly positive</th><td>TP {c.tp}</td><td>FN {c.fn}</td></tr>"
        f"<tr><th class='t'>truly negative</th><td>FP {c.fp}</td><td>TN {c.tn}</td></tr></table>"
    )
    return "\n".join(parts)


def _class_section(block: ClassResult, figs: dict[str, Any], conf: float) -> str:
    label = block.label
    pct = f"{conf * 100:g}%"
    parts = [f"<h2>Class: {_e(label)}</h2>", _operating_point(block, pct), _metrics_tables(block, pct)]
    parts.append(
        f"<h3>ROC and precision-recall</h3>{_img(figs.get('roc_pr'), f'ROC and PR curves for {label}')}"
    )
    cal = block.calibration
    parts.append(
        f"<h3>Calibration</h3><p>ECE {_num(cal.ece)} over {cal.bins} equal-width bins; "
        f"temperature applied: {cal.temperature:.3f}.</p>{_img(figs.get('calibration'), f'calibration for {label}')}"
    )
    parts.append(_subgroup_section(block, figs))
    return "\n".join(parts)


def _attribute_row(attr: AttributeResult) -> str:
    name = f'<td class="t">{_e(attr.name)}</td>'
    if not attr.available:
        return f'<tr>{name}<td class="t insufficient" colspan="7">unavailable: {_e(attr.reason)}</td></tr>'
    verdict = attr.verdict
    verdict_cell = "—" if verdict is None else f'<span class="{_VERDICT_CLASS[verdict]}">{_e(verdict)}</span>'
    if attr.worst_group is None:
        return f'<tr>{name}<td class="t insufficient" colspan="6">insufficient data: {_e(attr.note or "")}</td><td class="t">{verdict_cell}</td></tr>'
    return (
        f'<tr>{name}<td class="t">{_e(attr.reference_group or "—")} <span class="note">{_e(attr.reference_rule)}</span></td>'
        f'<td class="t">{_e(attr.worst_group)}</td><td>{_ci(attr.worst_group_miss_rate)}</td>'
        f"<td>{_num(attr.miss_rate_gap)}</td><td>{_num(attr.equalized_odds_difference)}</td>"
        f"<td>{_num(attr.auroc_gap)}</td><td class='t'>{verdict_cell}</td></tr>"
    )


def _group_row(row: GroupRow) -> str:
    cls = ' class="worst"' if row.is_worst else ""
    head = (
        f'<td class="t">{_e(row.attribute)}</td><td class="t">{_e(row.group)}{" (reference)" if row.is_reference else ""}</td>'
        f"<td>{row.n}</td><td>{row.patients}</td><td>{row.positives}</td>"
    )
    verdict = (
        f'<td class="t"><span class="{_VERDICT_CLASS[row.verdict]}">{_e(row.verdict)}</span> '
        f'<span class="note">{_e(row.verdict_reason)}</span></td>'
        if row.verdict
        else f'<td class="t note">{_e(row.verdict_reason)}</td>'
    )
    if not row.ok:
        return f'<tr>{head}<td class="t insufficient" colspan="5">{_e(row.status)}</td>{verdict}</tr>'
    cells = "".join(
        f"<td>{_ci(row.metrics[m])}</td>" for m in ("sensitivity", "miss_rate", "specificity", "auroc")
    )
    diff = "—" if row.difference_vs_reference is None else _ci(row.difference_vs_reference)
    return f"<tr{cls}>{head}{cells}<td>{diff}</td>{verdict}</tr>"


def _subgroup_section(block: ClassResult, figs: dict[str, Any]) -> str:
    label = block.label
    parts = ["<h3>Subgroups</h3>", _img(figs.get("subgroups"), f"subgroup sensitivity for {label}")]
    parts.append(
        "<table><tr><th class='t'>attribute</th><th class='t'>reference group</th><th class='t'>worst group</th>"
        "<th>worst-group miss rate</th><th>miss-rate gap (max − min, biased upward)</th><th>equalized-odds difference</th>"
        "<th>AUROC gap</th><th class='t'>gate verdict</th></tr>"
        + "".join(_attribute_row(a) for a in block.attributes.values())
        + "</table>"
    )
    body = []
    for attr in block.attributes.values():
        if attr.available:
            body.extend(_group_row(g) for g in attr.groups)
    parts.append(
        "<table><tr><th class='t'>attribute</th><th class='t'>group</th><th>n</th><th>patients</th><th>positives</th>"
        "<th>sensitivity</th><th>miss rate</th><th>specificity</th><th>AUROC</th>"
        "<th>miss rate − reference's</th><th class='t'>verdict and reason</th></tr>"
        + "".join(body)
        + "</table><p class='note'>Highlighted: worst group (highest miss rate) of each attribute. Groups whose "
        "value is unknown are shown but not compared (evaluation.fairness.include_unknown). The gap "
        "max − min is biased upward (noise alone makes it positive); the gate decides on each group's "
        "difference to the reference group, with simultaneous intervals. Rates: Wilson intervals on the "
        "patient-adjusted effective sample size; AUROC: Newcombe's score interval; differences: Newcombe's "
        "hybrid score interval. Gaps to the best group and to the overall figure are in subgroups.csv.</p>"
    )
    return "\n".join(parts)


def _gate_section(result: EvaluationResult) -> str:
    gate = result.gate
    limits = {k: v for k, v in gate.limits.items() if k.startswith("max_") and v is not None}
    verdict = gate.verdict
    if verdict == NO_LIMITS:
        return '<p class="warn">Fairness gate: no limits configured (evaluation.fairness).</p>'
    if verdict == PASS:
        return (
            f'<p class="pass">Fairness gate passed: every interval lies within the limits {_e(limits)}.</p>'
        )
    title = "Fairness gate FAILED" if verdict == FAIL else "Fairness gate: CANNOT CERTIFY"
    items = "".join(f"<li>{_e(f)}</li>" for f in gate.failures + gate.uncertain)
    items += "".join(f"<li>could not be checked: {_e(u)}</li>" for u in gate.unchecked)
    return (
        f'<div class="{_VERDICT_CLASS[verdict]}"><b>{title}</b> (limits: {_e(limits)})<ul>{items}</ul></div>'
    )


def _audit_section(a: Any) -> str:
    if a is None:
        return ""
    errs = (
        "".join(f'<p class="fail">{_e(e)}</p>' for e in a.errors)
        or '<p class="pass">No patient appears in more than one split.</p>'
    )
    return (
        "<h2>Data audit</h2>"
        + errs
        + "<h3>Splits</h3>"
        + _frame_table(a.splits)
        + "<h3>Missing attributes</h3>"
        + _frame_table(a.missing)
        + "<h3>Subgroups per split</h3>"
        + _frame_table(a.subgroups)
    )


def render_report(result: EvaluationResult, figures: dict[str, dict[str, Any]]) -> str:
    """The whole report as one HTML string."""
    boot = result.settings["bootstrap"]
    conf = result.confidence
    pop = result.population
    leakage = "" if result.leakage is None else f'<p class="fail"><b>{_e(result.leakage.warning)}</b></p>'
    header = (
        f"<h1>xraytriage evaluation report</h1>{leakage}<p>Model <code>{_e(result.model_id or 'unnamed')}</code> · "
        f"created {_e(result.created_utc)} · xraytriage {_e(result.version)}</p>"
        f"<p>Population: {pop.scans} scans from {pop.patients} patients "
        f"(splits: {_e(', '.join(f'{k} {v}' for k, v in pop.splits.items()) or 'n/a')}). "
        f"Intervals ({conf * 100:g}%): rates by Wilson's score interval on the effective sample size "
        "(patients with several scans count less than their scans), AUROC by Newcombe's score interval, "
        f"F1/AUPRC/Brier/ECE by a percentile bootstrap over <b>patients</b> ({boot['iterations']} iterations, "
        f"seed {boot['seed']}); an interval never has zero width. Groups under {result.settings['min_group_size']} "
        "scans, or without a positive or negative case, are shown as insufficient data.</p>"
        "<p class='note'>Every figure describes this population at this operating point; a miss rate claimed "
        "elsewhere needs the same threshold, a comparable population and its interval.</p>"
    )
    sections = [
        _class_section(block, figures.get(label, {}), conf) for label, block in result.classes.items()
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>xraytriage evaluation {_e(result.model_id)}</title><style>{_CSS}</style></head><body>"
        + header
        + _gate_section(result)
        + "\n".join(sections)
        + _audit_section(result.audit)
        + "<p class='note'>Outputs beside this file: metrics.json (schema "
        f"{_e(SCHEMA_NAME)} v{SCHEMA_VERSION}), subgroups.csv, predictions.csv.</p>{leakage}</body></html>\n"
    )
