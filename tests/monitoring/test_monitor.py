"""``xraytriage monitor``: each statistic against an independent oracle, no alert on a fresh draw of the
validation population, an alert that names group and window on a shift, and the command's files and
exit codes (several scores files, repeated scans, older files without the scope columns)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xraytriage.cli import main
from xraytriage.commands.exit_codes import EXIT_MONITOR_ALERT
from xraytriage.config import ConfigError, MonitorConfig, load_config
from xraytriage.monitoring import drift
from xraytriage.monitoring.alerts import bh_q_values, decide
from xraytriage.monitoring.compare import monitor_scores
from xraytriage.monitoring.deployed import read_deployed
from xraytriage.monitoring.performance import expected_miss_rate
from xraytriage.monitoring.reference import ReferenceMissing, ValidationReference
from xraytriage.monitoring.results import ALERT, CANNOT_TELL, NO_SHIFT, Check
from xraytriage.monitoring.simulation import Population, calibrated_reference, deployed_scores
from xraytriage.monitoring.windows import window_keys

WEEKS = ["2026-11-02", "2026-11-09", "2026-11-16", "2026-11-23"]  # Mondays: ISO weeks 45 to 48
SITES = {"A": 150, "B": 100, "C": 60}
BY = ["site", "manufacturer", "view"]


# ------------------------------------------------------------------------------------------ oracles
def test_psi_by_hand() -> None:
    """Ten validation values, two bins (edge at their median 0.55): validation 5|5 scans, deployed
    [0.1, 0.2, 0.9] 2|1; shares with half a scan per bin: 0.5|0.5 and 2.5/4|1.5/4."""
    reference = np.arange(1, 11) / 10
    assert drift.psi_edges(reference, 2).tolist() == [0.55]
    expected = (2.5 / 4 - 0.5) * math.log((2.5 / 4) / 0.5) + (1.5 / 4 - 0.5) * math.log((1.5 / 4) / 0.5)
    assert drift.psi(reference, np.array([0.1, 0.2, 0.9]), bins=2) == pytest.approx(expected, abs=1e-12)
    # a value exactly on an edge belongs to the bin above it
    assert drift.bin_shares(np.array([0.55]), np.array([0.55])).tolist() == [0.5 / 2, 1.5 / 2]
    assert drift.psi(reference, reference, bins=5) == 0.0


def test_ks_matches_a_hand_computed_statistic_and_scipy() -> None:
    rng = np.random.default_rng(3)
    reference, current = rng.normal(0, 1, 300), rng.normal(0.8, 1, 80)
    grid = np.sort(np.concatenate([reference, current]))
    cdf_cur = np.searchsorted(np.sort(current), grid, side="right") / len(current)
    cdf_ref = np.searchsorted(np.sort(reference), grid, side="right") / len(reference)
    result = drift.shift(reference, current, bins=10)
    assert result.ks_statistic == pytest.approx(np.max(np.abs(cdf_cur - cdf_ref)), abs=1e-12)
    assert result.p_value == pytest.approx(
        stats.ks_2samp(current, reference, method="asymp").pvalue, rel=1e-9
    )
    higher = drift.shift(reference, current, bins=10, alternative="higher")
    assert higher.ks_statistic == pytest.approx(np.max(cdf_ref - cdf_cur), abs=1e-12)
    assert higher.p_value < 0.01
    assert (
        drift.shift(reference, current - 1.6, bins=10, alternative="higher").p_value > 0.5
    )  # lower: no alarm


def test_cbpe_against_every_labelling_enumerated() -> None:
    """Ten scans: all 2**10 labellings weighted by their probability give the exact expected sensitivity
    ratio, the exact distribution of the miss rate (given a positive) and the chance it is <= a limit."""
    p = np.array([0.05, 0.1, 0.15, 0.3, 0.35, 0.5, 0.6, 0.7, 0.85, 0.95])
    threshold = 0.5
    flagged = p >= threshold
    weights, misses = [], []
    for y in itertools.product([0, 1], repeat=len(p)):
        y = np.array(y, bool)
        w = float(np.prod(np.where(y, p, 1 - p)))
        if y.any():
            weights.append(w)
            misses.append((y & ~flagged).sum() / y.sum())
    weights_a, misses_a = np.array(weights) / sum(weights), np.array(misses)
    est = expected_miss_rate(p, threshold, simulations=200_000, confidence=0.9, rng=np.random.default_rng(0))
    assert est is not None
    assert est.sensitivity == pytest.approx(p[flagged].sum() / p.sum(), abs=1e-12)  # NannyML's ratio
    assert est.draws.mean() == pytest.approx(float(weights_a @ misses_a), abs=0.003)
    assert est.chance_at_most(0.25) == pytest.approx(float(weights_a[misses_a <= 0.25].sum()), abs=0.004)
    order = np.argsort(misses_a)
    cdf = np.cumsum(weights_a[order])
    exact_high = misses_a[order][np.searchsorted(cdf, 0.95)]
    assert est.miss_rate_high == pytest.approx(exact_high, abs=1e-9)
    assert est.miss_rate_low < est.miss_rate < est.miss_rate_high  # never zero width here


def test_cbpe_tracks_the_true_miss_rate_of_calibrated_scans() -> None:
    rng = np.random.default_rng(11)
    p = rng.beta(1.2, 4.0, 4000)
    y = rng.random(4000) < p
    est = expected_miss_rate(p, 0.2, simulations=2000, confidence=0.95, rng=rng)
    true_miss = float((y & (p < 0.2)).sum() / y.sum())
    assert est is not None and est.miss_rate_low <= true_miss <= est.miss_rate_high


def test_bh_at_its_exact_boundary() -> None:
    """m = 4, q = 0.5: step-up thresholds 0.125, 0.25, 0.375, 0.5 (binary fractions: exact in floats).
    p = 0.375 sits on the third threshold, so the three smallest are rejected (0.3 too, though above
    0.25); 1e-12 above it, only 0.125 (on the first threshold) is (one ulp would be lost in
    q = p m / k)."""
    p = [0.9, 0.125, 0.375, 0.3]
    assert bh_q_values(p).tolist() == [0.9, 0.5, 0.5, 0.5]

    def verdicts(p_values: list[float]) -> list[str]:
        checks = [
            Check("w", "all", "all", "x", "flagged_rate", 100, effect=0.5, limit=0.1, p_value=v)
            for v in p_values
        ]
        decide(checks, false_alert_rate=0.5)
        return [c.verdict for c in checks]

    assert verdicts(p) == [NO_SHIFT, ALERT, ALERT, ALERT]
    assert verdicts([0.9, 0.125, 0.375 + 1e-12, 0.3]) == [NO_SHIFT, ALERT, NO_SHIFT, NO_SHIFT]
    assert verdicts([0.9, 0.125 + 1e-12, 0.375 + 1e-12, 0.3]) == [NO_SHIFT] * 4


def test_a_real_difference_below_its_limit_is_not_an_alert() -> None:
    checks = [Check("w", "all", "all", "x", "flagged_rate", 5000, effect=0.02, limit=0.1, p_value=1e-9)]
    decide(checks, 0.01)
    assert checks[0].verdict == "shift below limit" and "below limit" in checks[0].why


def test_iso_week_and_day_windows() -> None:
    dates = pd.Series(["2026-11-02", "2026-11-08", "2026-11-09", "", "not a date"])
    assert window_keys(dates, "week").tolist() == ["2026-W45", "2026-W45", "2026-W46", "unknown", "unknown"]
    assert window_keys(dates, "day").tolist()[:3] == ["2026-11-02", "2026-11-08", "2026-11-09"]


# ------------------------------------------------------------------------------ simulated populations
def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _run(tmp_path: Path, frame: pd.DataFrame, seed: int = 0) -> tuple:
    ref = calibrated_reference(np.random.default_rng(seed), 500)
    deployed = read_deployed([_write(frame, tmp_path / "scores.csv")], ref.labels, ref.model_id, BY)
    return monitor_scores(deployed, ref, MonitorConfig()), ref


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_alert_on_a_fresh_draw_of_the_validation_population(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = calibrated_reference(rng, 500)
    frame = deployed_scores(rng, ref, WEEKS, SITES)
    deployed = read_deployed([_write(frame, tmp_path / "s.csv")], ref.labels, ref.model_id, BY)
    result = monitor_scores(deployed, ref, MonitorConfig())
    assert result.alerts == []
    assert result.tests == 5 * (1 + 3) * 5  # (4 weeks + all) x (all + 3 sites) x 5 measures, all tested
    assert {c.verdict for c in result.checks} == {NO_SHIFT}


def test_darker_scanner_at_one_site_alerts_naming_group_and_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    ref = calibrated_reference(rng, 500)
    shifted = {("B", WEEKS[2]): Population(power=0.6, ood_shift=3.0)}
    frame = deployed_scores(rng, ref, WEEKS, SITES, shifted)
    deployed = read_deployed([_write(frame, tmp_path / "s.csv")], ref.labels, ref.model_id, BY)
    alerts = monitor_scores(deployed, ref, MonitorConfig()).alerts
    named = {(a.measure, a.attribute, a.group, a.window) for a in alerts}
    assert ("probability_shift", "site", "B", "2026-W47") in named
    assert ("flagged_rate", "site", "B", "2026-W47") in named
    assert ("ood_shift", "site", "B", "2026-W47") in named
    assert all(a.window in ("2026-W47", "all") for a in alerts)
    assert all(a.group in ("B", "all") for a in alerts)


def test_out_of_scope_surge_alerts(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    ref = calibrated_reference(rng, 500)
    frame = deployed_scores(rng, ref, WEEKS, SITES, {("C", WEEKS[0]): Population(out_of_scope_rate=0.4)})
    deployed = read_deployed([_write(frame, tmp_path / "s.csv")], ref.labels, ref.model_id, BY)
    alerts = monitor_scores(deployed, ref, MonitorConfig()).alerts
    assert ("out_of_scope_rate", "C", "2026-W45") in {(a.measure, a.group, a.window) for a in alerts}


def test_small_groups_are_cannot_tell(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    ref = calibrated_reference(rng, 500)
    frame = deployed_scores(rng, ref, WEEKS[:1], {"A": 100, "tiny": 12})
    deployed = read_deployed([_write(frame, tmp_path / "s.csv")], ref.labels, ref.model_id, BY)
    result = monitor_scores(deployed, ref, MonitorConfig())
    tiny = [c for c in result.checks if c.group == "tiny"]
    assert tiny and all(c.verdict == CANNOT_TELL and c.p_value is None for c in tiny)
    assert all("fewer than monitor.min_scans=30" in c.why for c in tiny)


# ------------------------------------------------------------------------------------ input handling
def test_several_files_repeated_scans_count_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    ref = calibrated_reference(rng, 200)
    night1 = deployed_scores(rng, ref, WEEKS[:1], {"A": 40})
    night2 = deployed_scores(rng, ref, WEEKS[1:2], {"A": 40})
    rerun = night1.iloc[:10].copy()  # the same scans scored again a night later: newest row wins
    rerun["scored_at"], rerun["prob_finding"] = "2026-11-10T01:00:00", 0.99
    png = night1.iloc[:3].copy()  # PNGs have no SOPInstanceUID: the path identifies them
    png["sop_instance_uid"], png["path"] = "", ["/png/a.png", "/png/b.png", "/png/a.png"]
    older = night2.iloc[:4].drop(columns=["sop_instance_uid", "scored_at"])  # an old file: no UID column
    older["path"] = [f"/old/{i}.dcm" for i in range(4)]
    files = [_write(f, tmp_path / f"n{i}.csv") for i, f in enumerate([night1, night2, rerun, png, older])]
    deployed = read_deployed(files, ref.labels, ref.model_id, BY)
    assert deployed.rows_read == 40 + 40 + 10 + 3 + 4 and len(deployed.table) == 80 + 2 + 4
    assert deployed.duplicates_dropped == 11
    assert (deployed.table["prob_finding"] == 0.99).sum() == 10


def test_older_scores_files_without_scope_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    ref = calibrated_reference(rng, 300)
    frame = deployed_scores(rng, ref, WEEKS[:2], {"A": 60})
    old = frame.drop(
        columns=["in_scope", "scope_reasons", "ood_score", "study_date", "view", "manufacturer", "site"]
    )
    deployed = read_deployed([_write(old, tmp_path / "old.csv")], ref.labels, ref.model_id, BY)
    assert not deployed.has_in_scope and not deployed.has_ood
    text = " | ".join(deployed.warnings)
    assert "column 'study_date' absent from old.csv" in text and "window is 'unknown'" in text
    assert "column 'site' absent from old.csv: its groups are 'unknown'" in text
    result = monitor_scores(deployed, ref, MonitorConfig())
    assert {c.window for c in result.checks} == {"unknown", "all"}
    assert {c.measure for c in result.checks} == {"probability_shift", "flagged_rate", "expected_miss_rate"}


def test_reference_missing_names_the_fix() -> None:
    class Old:
        labels, thresholds, task, model_id, scope = ["finding"], {"finding": 0.5}, "binary", "abc", {}

    with pytest.raises(
        ReferenceMissing, match=r"model.pt: holds no validation reference .*retrain or re-export"
    ):
        ValidationReference.from_bundle(Old(), "model.pt")


def test_monitor_config_keys_are_validated() -> None:
    assert load_config(None, ["monitor.window=day", "monitor.by=[site]"]).monitor.by == ["site"]
    with pytest.raises(ConfigError, match=r"monitor\.false_alert_rate"):
        load_config(None, ["monitor.false_alert_rate=0.7"])
    with pytest.raises(ConfigError, match="patient_id"):
        load_config(None, ["monitor.by=[patient_id]"])
    with pytest.raises(ConfigError, match=r"unknown key 'monitor\.psi_limt'"):
        load_config(None, ["monitor.psi_limt=0.3"])


# ------------------------------------------------------------------------------------------- command
@pytest.fixture
def bundle_with_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real saved bundle; its validation reference set the way the scope record stores it."""
    from support.scoring import make_bundle
    from xraytriage.models import bundle as bundle_module

    path = make_bundle(tmp_path / "model.pt", threshold=0.2)
    loaded = bundle_module.load_bundle(path)
    rng = np.random.default_rng(0)
    ref = calibrated_reference(rng, 500)
    loaded.scope = {
        "validation": {
            "probabilities": {"finding": ref.probabilities["finding"].tolist()},
            "ood_scores": ref.ood_scores.tolist(),
            "out_of_scope_rate": 0.0,
            "n_scans": 500,
        }
    }
    monkeypatch.setattr(bundle_module, "load_bundle", lambda p, map_location="cpu": loaded)
    reference = ValidationReference.from_bundle(loaded)
    return path, reference


def test_command_alert_exit_code_and_outputs(
    tmp_path: Path, bundle_with_reference, capsys: pytest.CaptureFixture[str]
) -> None:
    model, ref = bundle_with_reference
    rng = np.random.default_rng(12)
    frame = deployed_scores(rng, ref, WEEKS, SITES, {("B", WEEKS[3]): Population(power=0.5)})
    halves = [_write(frame.iloc[:500], tmp_path / "mon.csv"), _write(frame.iloc[400:], tmp_path / "tue.csv")]
    out = tmp_path / "monitor"
    code = main(["monitor", "--model", str(model), *map(str, halves), "--out", str(out), "--no-progress"])
    err = capsys.readouterr()
    assert code == EXIT_MONITOR_ALERT == 5
    assert "ALERT: probability shift of finding, site=B, window 2026-W48" in err.err
    assert "1240 scans (100 repeated rows dropped) from 2 file(s)" in err.out
    body = json.loads((out / "monitor.json").read_text())
    assert body["schema"] == "xraytriage.monitor" and body["scans"] == 1240
    assert any(a["group"] == "B" and a["window"] == "2026-W48" for a in body["alerts"])
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    checks = pd.read_csv(out / "monitor_checks.csv")
    assert len(checks) == len(body["checks"])


def test_command_fresh_draw_exits_zero_and_overrides_apply(
    tmp_path: Path, bundle_with_reference, capsys: pytest.CaptureFixture[str]
) -> None:
    model, ref = bundle_with_reference
    frame = deployed_scores(np.random.default_rng(13), ref, WEEKS, SITES)
    scores = _write(frame, tmp_path / "scores.csv")
    out = tmp_path / "monitor"
    argv = ["monitor", "--model", str(model), str(scores), "monitor.min_scans=50", "--out", str(out)]
    assert main([*argv, "--by", "site", "--window", "day", "--no-tensorboard"]) == 0
    body = json.loads((out / "monitor.json").read_text())
    assert body["settings"]["min_scans"] == 50 and body["settings"]["window"] == "day"
    assert body["alerts"] == [] and not (out / "tensorboard").exists()
    assert "0 alert(s)" in capsys.readouterr().out


def test_command_refuses_scores_of_another_model_and_a_locked_output(
    tmp_path: Path, bundle_with_reference, capsys: pytest.CaptureFixture[str]
) -> None:
    from xraytriage.utils.lock import exclusive_lock, lock_file_for

    model, ref = bundle_with_reference
    frame = deployed_scores(np.random.default_rng(14), ref, WEEKS[:1], {"A": 40})
    other = _write(frame.assign(model_id="0123456789ab"), tmp_path / "other.csv")
    assert main(["monitor", "--model", str(model), str(other), "--out", str(tmp_path / "o")]) == 2
    assert "other.csv: scored by model 0123456789ab" in capsys.readouterr().err
    mine = _write(frame.assign(model_id=ref.model_id), tmp_path / "mine.csv")
    out = tmp_path / "locked"
    out.mkdir()
    with exclusive_lock(lock_file_for(out), "test"):
        assert main(["monitor", "--model", str(model), str(mine), "--out", str(out)]) == 2
    assert "in use by another xraytriage run" in capsys.readouterr().err


def test_cbpe_interval_never_zero_width_when_nothing_is_flagged() -> None:
    """No scan reaches the threshold: under calibration every positive is missed (miss rate 1), yet
    the answer keeps an interval: Wilson of 3 missed of 3 expected positives."""
    est = expected_miss_rate(np.full(30, 0.1), 0.5, 500, 0.95, np.random.default_rng(0))
    assert est is not None and est.miss_rate == 1.0 and est.miss_rate_high == 1.0
    low = stats.binomtest(3, 3).proportion_ci(confidence_level=0.95, method="wilson").low
    assert est.miss_rate_low == pytest.approx(low, abs=1e-12) and est.miss_rate_low < 0.6


def test_shipped_monitor_config_states_the_defaults() -> None:
    shipped = load_config(Path(__file__).resolve().parents[2] / "configs" / "monitor.yaml").monitor
    assert shipped == MonitorConfig()


def test_flagged_rate_interval_is_wilson_by_hand() -> None:
    """14 of 60 scans flagged: the Wilson score interval from its formula (z = 1.959964)."""
    from xraytriage.monitoring.compare import CellChecks
    from xraytriage.monitoring.windows import Cell

    ref = calibrated_reference(np.random.default_rng(0), 200)
    probs = np.array([0.9] * 14 + [0.01] * 46)
    check = CellChecks(
        Cell("w", "all", "all", np.arange(60)), ref, MonitorConfig(), np.random.default_rng(0), {}
    )
    result = check.flagged_rate("finding", probs)
    z, n, p = 1.959963984540054, 60, 14 / 60
    centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert result.value == p
    assert result.value_low == pytest.approx((centre - half) / (1 + z * z / n), abs=1e-12)
    assert result.value_high == pytest.approx((centre + half) / (1 + z * z / n), abs=1e-12)
    k0 = int((ref.probabilities["finding"] >= 0.2).sum())
    assert result.reference == k0 / 200 and result.effect == pytest.approx(abs(p - k0 / 200), abs=1e-15)
