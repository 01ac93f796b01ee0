# ruff: noqa: E501  (HTML template strings read better unbroken)
"""Self-contained ``report.html``: inline CSS, figures as base64 PNG, no scripts, no external assets.

Everything user-provided (labels, group values, model id) is HTML-escaped.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from xraytriage.evaluation.plots import figure_to_base64_png

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


def _ci(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("value") is None:
        return '<span class="insufficient">undefined</span>'
    text = _num(stat["value"], digits)
    if stat.get("ci_low") is not None:
        text += f" ({_num(stat['ci_low'], digits)}–{_num(stat['ci_high'], digits)})"
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


def _class_section(
    label: str, block: dict[str, Any], table: pd.DataFrame, figs: dict[str, Any], conf: float
) -> str:
    pct = f"{conf * 100:g}%"
    parts = [f"<h2>Class: {_e(label)}</h2>"]
    parts.append(
        f"<p>Operating point: <b>threshold {block['threshold']:.4f}</b> (source: {_e(block['threshold_source'])}); "
        f"a scan is flagged positive when its probability is at or above it. "
        f"{block['counts']['n']} scans with a known label ({block['counts']['positives']} positive); "
        f"{block['counts']['excluded']} uncertain/unknown left out.</p>"
    )
    tc = block.get("target_check")
    if tc:
        held = tc["held"]
        cls = "pass" if tc["held_at_ci_low"] else ("warn" if held else "fail")
        verdict = (
            "held, and the whole interval is at or above the target"
            if tc["held_at_ci_low"]
            else (
                "held by the point estimate, but the interval reaches below the target"
                if held
                else "NOT held"
            )
        )
        parts.append(
            f'<p class="{cls}">Promised {tc["metric"]} {tc["target"]:.3f}: validation {_num(tc["validation"])}, '
            f"test {_num(tc['test'])} ({pct} CI {_num(tc['test_ci_low'])}–{_num(tc['test_ci_high'])}) — {verdict}.</p>"
        )
    rows = "".join(
        f'<tr><td class="t">{_e(_NAMES.get(k, k))}</td><td>{_ci(v)}</td></tr>'
        for k, v in block["metrics"].items()
    )
    parts.append(
        f"<h3>Metrics at the operating point ({pct} patient-bootstrap CI)</h3><table><tr><th class='t'>metric</th><th>test</th></tr>{rows}</table>"
    )
    val = block.get("validation")
    if val:
        vrows = "".join(
            f'<tr><td class="t">{_e(_NAMES[k])}</td><td>{_ci(val[k])}</td><td>{_ci(block["metrics"][k])}</td></tr>'
            for k in ("sensitivity", "miss_rate", "specificity", "ppv", "auroc")
        )
        parts.append(
            f"<h3>Validation vs test at the same threshold</h3><table><tr><th class='t'>metric</th>"
            f"<th>validation (n={val['n']}, {val['positives']} pos.)</th><th>test</th></tr>{vrows}</table>"
        )
    cm = block["confusion_matrix"]
    parts.append(
        "<h3>Confusion matrix</h3><table><tr><th></th><th>predicted positive</th><th>predicted negative</th></tr>"
        f"<tr><th class='t'>truly positive</th><td>TP {_ci(cm['tp'], 0)}</td><td>FN {_ci(cm['fn'], 0)}</td></tr>"
        f"<tr><th class='t'>truly negative</th><td>FP {_ci(cm['fp'], 0)}</td><td>TN {_ci(cm['tn'], 0)}</td></tr></table>"
    )
    parts.append(
        f"<h3>ROC and precision-recall</h3>{_img(figs.get('roc_pr'), f'ROC and PR curves for {label}')}"
    )
    cal = block["calibration"]
    parts.append(
        f"<h3>Calibration</h3><p>ECE {_num(cal['ece'])} over {cal['bins']} equal-width bins; "
        f"temperature applied: {cal['temperature']:.3f}.</p>{_img(figs.get('calibration'), f'calibration for {label}')}"
    )
    parts.append(_subgroup_section(label, block, table, figs))
    return "\n".join(parts)


def _subgroup_section(label: str, block: dict[str, Any], table: pd.DataFrame, figs: dict[str, Any]) -> str:
    parts = ["<h3>Subgroups</h3>", _img(figs.get("subgroups"), f"subgroup sensitivity for {label}")]
    summ = []
    for attr, s in block["subgroups"].items():
        if not s.get("available"):
            summ.append(
                f'<tr><td class="t">{_e(attr)}</td><td class="t insufficient" colspan="6">unavailable: {_e(s.get("reason", ""))}</td></tr>'
            )
            continue
        if s.get("worst_group") is None:
            summ.append(
                f'<tr><td class="t">{_e(attr)}</td><td class="t insufficient" colspan="6">insufficient data: {_e(s.get("note", ""))}</td></tr>'
            )
            continue
        summ.append(
            f'<tr><td class="t">{_e(attr)}</td><td class="t">{_e(s["worst_group"])}</td>'
            f"<td>{_ci(s['worst_group_miss_rate'])}</td><td>{_ci(s['miss_rate_gap'])}</td>"
            f"<td>{_num(s.get('equalized_odds_difference'))}</td><td>{_num(s.get('auroc_gap'))}</td>"
            f"<td>{_num(s.get('worst_sensitivity_diff_vs_overall'))}</td></tr>"
        )
    parts.append(
        "<table><tr><th class='t'>attribute</th><th class='t'>worst group</th><th>worst-group miss rate</th>"
        "<th>miss-rate gap (= equal-opportunity difference)</th><th>equalized-odds difference</th><th>AUROC gap</th>"
        "<th>worst sensitivity − overall</th></tr>" + "".join(summ) + "</table>"
    )
    rows = table[table["label"] == label]
    body = []
    for _, r in rows.iterrows():
        if r["group"] == "":
            body.append(
                f'<tr><td class="t">{_e(r["attribute"])}</td><td class="t insufficient" colspan="9">{_e(r["status"])}</td></tr>'
            )
            continue
        worst = r.get("is_worst")
        cls = ' class="worst"' if worst is not None and pd.notna(worst) and bool(worst) else ""
        head = (
            f'<td class="t">{_e(r["attribute"])}</td><td class="t">{_e(r["group"])}</td>'
            f"<td>{int(r['n'])}</td><td>{int(r['positives'])}</td><td>{_num(r['prevalence'])}</td>"
        )
        if r["status"] != "ok":
            body.append(f'<tr>{head}<td class="t insufficient" colspan="5">{_e(r["status"])}</td></tr>')
            continue
        cells = "".join(
            f"<td>{_ci({'value': r[m], 'ci_low': r[f'{m}_ci_low'], 'ci_high': r[f'{m}_ci_high']})}</td>"
            for m in ("sensitivity", "miss_rate", "specificity", "ppv", "auroc")
        )
        body.append(f"<tr{cls}>{head}{cells}</tr>")
    parts.append(
        "<table><tr><th class='t'>attribute</th><th class='t'>group</th><th>n</th><th>positives</th><th>prevalence</th>"
        "<th>sensitivity</th><th>miss rate</th><th>specificity</th><th>PPV</th><th>AUROC</th></tr>"
        + "".join(body)
        + "</table><p class='note'>Highlighted: worst group (highest miss rate) of each attribute. "
        "Gaps to the best group and to the overall figure are in subgroups.csv.</p>"
    )
    return "\n".join(parts)


def render_report(result: Any, figures: dict[str, dict[str, Any]]) -> str:
    """The whole report as one HTML string."""
    m = result.metrics
    boot = m["bootstrap"]
    conf = float(boot["confidence"])
    gate = m["fairness_gate"]
    limits = {k: v for k, v in gate["limits"].items() if v is not None}
    if not limits:
        gate_html = '<p class="warn">Fairness gate: no limits configured (evaluation.fairness).</p>'
    elif gate["passed"]:
        gate_html = f'<p class="pass">Fairness gate passed (limits: {_e(limits)}).</p>'
    else:
        items = "".join(f"<li>{_e(f)}</li>" for f in gate["failures"])
        gate_html = (
            f'<div class="fail"><b>Fairness gate FAILED</b> (limits: {_e(limits)})<ul>{items}</ul></div>'
        )
    if gate.get("unchecked"):
        gate_html += (
            '<p class="warn">Could not be checked: ' + "; ".join(_e(u) for u in gate["unchecked"]) + "</p>"
        )
    pop = m["population"]
    header = (
        f"<h1>xraytriage evaluation report</h1><p>Model <code>{_e(m['model_id'] or 'unnamed')}</code> · "
        f"created {_e(m['created_utc'])} · xraytriage {_e(m['xraytriage_version'])}</p>"
        f"<p>Population: {pop['scans']} scans from {pop['patients']} patients "
        f"(splits: {_e(', '.join(f'{k} {v}' for k, v in pop['splits'].items()) or 'n/a')}). "
        f"Intervals: {conf * 100:g}% percentile bootstrap over <b>patients</b>, {boot['iterations']} iterations, seed {boot['seed']}. "
        f"Groups under {m['min_group_size']} scans, or without a positive or negative case, are shown as insufficient data.</p>"
        "<p class='note'>Every figure describes this population at this operating point; a miss rate claimed "
        "elsewhere needs the same threshold, a comparable population and its interval.</p>"
    )
    sections = [
        _class_section(label, block, result.subgroups, figures.get(label, {}), conf)
        for label, block in m["classes"].items()
    ]
    audit_html = ""
    if result.audit is not None:
        a = result.audit
        errs = (
            "".join(f'<p class="fail">{_e(e)}</p>' for e in a.errors)
            or '<p class="pass">No patient appears in more than one split.</p>'
        )
        audit_html = (
            "<h2>Data audit</h2>"
            + errs
            + "<h3>Splits</h3>"
            + _frame_table(a.splits)
            + "<h3>Missing attributes</h3>"
            + _frame_table(a.missing)
            + "<h3>Subgroups per split</h3>"
            + _frame_table(a.subgroups)
        )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>xraytriage evaluation {_e(m['model_id'])}</title><style>{_CSS}</style></head><body>"
        + header
        + gate_html
        + "\n".join(sections)
        + audit_html
        + "<p class='note'>Outputs beside this file: metrics.json (schema "
        f"{_e(m['schema'])} v{m['schema_version']}), subgroups.csv, predictions.csv.</p></body></html>\n"
    )
