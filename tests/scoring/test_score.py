"""``xraytriage score``: discovery, outputs, bad files, resume, Parquet, studies, Grad-CAM, shard merge."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from support.scoring import make_bundle, read_csv_rows, run_score, write_dicom, write_pngs
from xraytriage.config import ModelConfig, PreprocessConfig
from xraytriage.models import build_model, save_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "model.pt")


@pytest.fixture
def seeded_folder(tmp_path: Path, pydicom_test_file) -> Path:
    """Good PNGs and DICOMs (one without extension) mixed with corrupt, non-image and zero-byte files."""
    root = tmp_path / "scans"
    write_pngs(root, 3)
    write_pngs(root / "nested" / "deeper", 2, seed=1)
    ct = pydicom_test_file("CT_small.dcm")
    write_dicom(ct, root / "study" / "IM0001", "1.2.3.4", "1.2.3.4.1")
    write_dicom(ct, root / "study" / "im2.bin", "1.2.3.4", "1.2.3.4.2")
    (root / "empty.dcm").write_bytes(b"")
    (root / "readme.txt").write_text("not a scan")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "truncated.dcm").write_bytes(Path(ct).read_bytes()[:2000])
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / ".hidden").mkdir()
    write_pngs(root / ".hidden", 1, prefix="secret")
    os.symlink(root, root / "nested" / "loop")  # a symlink loop must not hang discovery
    return root


# --- discovery ----------------------------------------------------------------------------------


def test_discovery_streams_skips_hidden_and_survives_symlink_loops(seeded_folder: Path) -> None:
    from xraytriage.scoring.discovery import iter_inputs

    stream = iter_inputs(seeded_folder)
    assert not isinstance(stream, (list, tuple, set))  # streamed, not materialised
    found = [Path(p).relative_to(seeded_folder).as_posix() for p in stream]
    assert len(found) == len(set(found))
    assert "study/IM0001" in found and "nested/deeper/img0001.png" in found
    assert not any(Path(p).name.startswith(".") or p.startswith(".") for p in found)
    assert "Thumbs.db" not in found
    assert not any("loop" in p for p in found)
    assert len(found) == 3 + 2 + 2 + 4  # images + DICOMs + (empty, txt, corrupt png, truncated dcm)


def test_list_and_manifest_inputs_resolve_relative_paths(tmp_path: Path, bundle: Path) -> None:
    pngs = write_pngs(tmp_path / "data", 3)
    listing = tmp_path / "paths.txt"
    listing.write_text(f"# scans\ndata/{pngs[0].name}\n\n{pngs[1]}\ndata/{pngs[1].name}\n")
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"path": [f"data/{p.name}" for p in pngs], "patient_id": ["a", "b", "c"]}).to_csv(
        manifest, index=False
    )
    assert run_score(listing, bundle, tmp_path / "list.csv") == 0
    rows = read_csv_rows(tmp_path / "list.csv")
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in pngs[:2])  # listed twice, scored once
    assert run_score(manifest, bundle, tmp_path / "man.csv") == 0
    assert sorted(r["path"] for r in read_csv_rows(tmp_path / "man.csv")) == sorted(str(p) for p in pngs)


# --- a full run over a messy folder ---------------------------------------------------------------


def test_bad_files_go_to_errors_file_and_run_continues(
    seeded_folder: Path, bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "scores.csv"
    studies = tmp_path / "out" / "studies.csv"
    rc = run_score(
        seeded_folder, bundle, out, "--workers", "2", "--batch-size", "3", "--studies", str(studies)
    )
    assert rc == 1  # some files failed (the text file alone would not fail the run)
    rows = read_csv_rows(out)
    errors = read_csv_rows(tmp_path / "out" / "scores.errors.csv")
    scored = {Path(r["path"]).name for r in rows}
    assert scored == {"img0000.png", "img0001.png", "img0002.png", "IM0001", "im2.bin"}
    reasons = {Path(r["path"]).name: r["reason"] for r in errors}
    assert reasons["empty.dcm"] == "empty_file"
    assert reasons["readme.txt"] == "not_a_scan"  # skipped, listed, not a failure
    assert reasons["corrupt.png"] == "decode_failed"
    assert reasons["truncated.dcm"] in {"truncated", "corrupt_header", "decode_failed", "no_pixel_data"}
    assert len(rows) + len(errors) == 11  # every file accounted for exactly once
    assert all(e["message"] for e in errors)
    dicom_rows = [r for r in rows if Path(r["path"]).name in {"IM0001", "im2.bin"}]
    assert {r["sop_instance_uid"] for r in dicom_rows} == {"1.2.3.4.1", "1.2.3.4.2"}
    assert {r["study_instance_uid"] for r in dicom_rows} == {"1.2.3.4"}
    assert list(rows[0]) == [
        "path",
        "sop_instance_uid",
        "study_instance_uid",
        "prob_finding",
        "flag_finding",
        "in_scope",
        "scope_reasons",
        "ood_score",
        "study_date",
        "view",
        "manufacturer",
        "site",
        "model_id",
        "scored_at",
    ]
    for r in rows:  # a bundle without a recorded scope: no rule, no image check, every scan in scope
        assert (r["in_scope"], r["scope_reasons"], r["ood_score"]) == ("1", "", "")
        assert r["flag_finding"] == str(int(float(r["prob_finding"]) >= 0.5))
    # Study aggregation: maximum over the study's two images.
    study = read_csv_rows(studies)
    assert len(study) == 1 and study[0]["n_images"] == "2"
    assert float(study[0]["prob_finding"]) == pytest.approx(max(float(r["prob_finding"]) for r in dicom_rows))
    # No patient names or birth dates anywhere.
    for f in (out, studies, tmp_path / "out" / "scores.errors.csv"):
        text = f.read_text()
        assert "Doe" not in text and "19700101" not in text


def test_probabilities_use_the_training_preprocessing(
    tmp_path: Path, bundle: Path, pydicom_test_file
) -> None:
    from xraytriage.data.tensors import image_to_tensor
    from xraytriage.io import load_image
    from xraytriage.models import load_bundle

    folder = tmp_path / "in"
    pngs = write_pngs(folder, 2)
    dcm = write_dicom(pydicom_test_file("MR_small.dcm"), folder / "mr", "9.9", "9.9.1")
    assert run_score(folder, bundle, tmp_path / "s.csv", "--workers", "0") == 0
    got = {r["path"]: float(r["prob_finding"]) for r in read_csv_rows(tmp_path / "s.csv")}
    b = load_bundle(bundle)
    for p in [*pngs, dcm]:
        image, _ = load_image(p, b.preprocess)
        x = image_to_tensor(image, b.preprocess, b.model_config.in_channels)[None]
        with torch.inference_mode():
            expected = float(b.probabilities(b.model(x))[0, 0])
        assert got[str(p)] == pytest.approx(expected, abs=1e-4)  # CPU folds BatchNorm: ~1e-5


def test_streamed_scans_fulfil_the_one_dataset_contract(tmp_path: Path, pydicom_test_file) -> None:
    """Scoring's dataset gives the same batch type as training's: decoded scans with their UIDs and
    header facts, failures alongside; a text file is ``not_a_scan`` unless strict."""
    from xraytriage.config import PreprocessConfig
    from xraytriage.data.dataset import ScanFailure, collate_scans
    from xraytriage.io import REASONS
    from xraytriage.scoring.dataset import StreamedScans

    dcm = write_dicom(pydicom_test_file("CT_small.dcm"), tmp_path / "ct.dcm", "1.2.3", "1.2.3.9")
    text = tmp_path / "readme.txt"
    text.write_text("not a scan")
    pp = PreprocessConfig(image_size=32)
    batch = collate_scans([StreamedScans(pp, 3)[p] for p in (str(text), str(dcm))])
    assert batch.paths == [str(dcm)] and batch.image.shape == (1, 3, 32, 32) and batch.target is None
    assert (batch.sop_uids, batch.study_uids, batch.index.tolist()) == (["1.2.3.9"], ["1.2.3"], [-1])
    assert batch.facts[0].modality == "CT"
    assert batch.failures == [ScanFailure(str(text), "not_a_scan", "skipped: text, not a scan")]
    strict = StreamedScans(pp, 3, skip_non_scans=False)[str(text)]
    sig = "unrecognised file signature"
    assert strict == ScanFailure(str(text), "not_an_image", f"{REASONS['not_an_image']} ({sig})", detail=sig)


def test_multilabel_bundle_gets_a_probability_and_flag_per_class(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "ml.pt", labels=["effusion", "pneumothorax"], threshold=0.0)
    write_pngs(tmp_path / "in", 2)
    assert run_score(tmp_path / "in", bundle, tmp_path / "s.csv") == 0
    rows = read_csv_rows(tmp_path / "s.csv")
    assert len(rows) == 2
    assert {"prob_effusion", "prob_pneumothorax", "flag_effusion", "flag_pneumothorax"} <= set(rows[0])
    assert all(r["flag_effusion"] == "1" and r["flag_pneumothorax"] == "1" for r in rows)


# --- resume -----------------------------------------------------------------------------------------


def test_resume_drops_partial_line_and_scores_only_missing(tmp_path: Path, bundle: Path) -> None:
    pngs = write_pngs(tmp_path / "in", 6)
    full = tmp_path / "full.csv"
    assert run_score(tmp_path / "in", bundle, full) == 0
    lines = full.read_text().splitlines(keepends=True)
    interrupted = tmp_path / "resumed.csv"
    interrupted.write_text("".join(lines[:3]) + lines[3][:25])  # header, 2 rows, half a row
    assert run_score(tmp_path / "in", bundle, interrupted) == 0
    rows = read_csv_rows(interrupted)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in pngs)
    assert interrupted.read_text().endswith("\n")
    reference = {r["path"]: float(r["prob_finding"]) for r in read_csv_rows(full)}
    assert {r["path"]: pytest.approx(float(r["prob_finding"]), abs=1e-5) for r in rows} == reference
    # A rerun on a complete output scores nothing and leaves it unchanged.
    before = interrupted.read_bytes()
    assert run_score(tmp_path / "in", bundle, interrupted) == 0
    assert interrupted.read_bytes() == before


def test_failed_files_are_not_retried_unless_asked(tmp_path: Path, bundle: Path) -> None:
    write_pngs(tmp_path / "in", 2)
    (tmp_path / "in" / "zero.png").write_bytes(b"")
    out = tmp_path / "s.csv"
    assert run_score(tmp_path / "in", bundle, out) == 1
    errors = tmp_path / "s.errors.csv"
    assert len(read_csv_rows(errors)) == 1
    assert run_score(tmp_path / "in", bundle, out) == 1  # still failed overall: the errors file has a row
    assert len(read_csv_rows(errors)) == 1  # not duplicated
    write_pngs(tmp_path / "fixed", 1)
    shutil.copy(tmp_path / "fixed" / "img0000.png", tmp_path / "in" / "zero.png")
    assert run_score(tmp_path / "in", bundle, out, "--retry-failed") == 0
    assert read_csv_rows(errors) == []
    assert len(read_csv_rows(out)) == 3


def test_output_from_another_model_is_refused(tmp_path: Path, bundle: Path) -> None:
    write_pngs(tmp_path / "in", 2)
    out = tmp_path / "s.csv"
    assert run_score(tmp_path / "in", bundle, out) == 0
    other = make_bundle(tmp_path / "other.pt", seed=1)
    write_pngs(tmp_path / "in", 3, seed=2, prefix="new")
    before = out.read_bytes()
    assert run_score(tmp_path / "in", other, out) == 2
    assert out.read_bytes() == before


def test_usage_errors_exit_2(tmp_path: Path, bundle: Path) -> None:
    assert run_score(tmp_path / "missing", bundle, tmp_path / "s.csv") == 2
    write_pngs(tmp_path / "in", 1)
    assert run_score(tmp_path / "in", tmp_path / "no.pt", tmp_path / "s.csv") == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("score:\n  batch_sise: 4\n")
    assert run_score(tmp_path / "in", bundle, tmp_path / "s.csv", "--config", str(bad)) == 2


def test_config_file_sets_defaults(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xraytriage import scoring

    seen = {}
    real = scoring.score

    def spy(opts):
        seen["opts"] = opts
        return real(opts)

    monkeypatch.setattr(scoring, "score", spy)
    write_pngs(tmp_path / "in", 1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("score:\n  batch_size: 7\n  num_workers: 0\n  device: cpu\n")
    assert (
        run_score(tmp_path / "in", bundle, tmp_path / "s.csv", "--config", str(cfg), "--batch-size", "5") == 0
    )
    assert (seen["opts"].batch_size, seen["opts"].workers, seen["opts"].device) == (5, 0, "cpu")


# --- Parquet, Grad-CAM, distributed merge ----------------------------------------------------------


def test_parquet_output_and_resume(tmp_path: Path, bundle: Path) -> None:
    pngs = write_pngs(tmp_path / "in", 3)
    out = tmp_path / "s.parquet"
    assert run_score(tmp_path / "in", bundle, out) == 0
    df = pd.read_parquet(out)
    assert sorted(df["path"]) == sorted(str(p) for p in pngs)
    assert not (tmp_path / "s.parquet.partial.csv").exists()
    write_pngs(tmp_path / "in", 2, seed=3, prefix="late")
    assert run_score(tmp_path / "in", bundle, out) == 0
    df2 = pd.read_parquet(out)
    assert len(df2) == 5 and df2["path"].is_unique
    assert df2["prob_finding"].dtype == np.float64


def test_cam_overlays_for_flagged_scans(tmp_path: Path) -> None:
    flag_all = make_bundle(tmp_path / "m.pt", threshold=0.0)
    write_pngs(tmp_path / "in", 2)
    cams = tmp_path / "cams"
    assert run_score(tmp_path / "in", flag_all, tmp_path / "s.csv", "--cam", str(cams)) == 0
    files = sorted(cams.glob("*.png"))
    assert len(files) == 2 and all(f.name.endswith("_finding.png") for f in files)
    with Image.open(files[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    never = make_bundle(tmp_path / "n.pt", threshold=1.01)
    assert run_score(tmp_path / "in", never, tmp_path / "t.csv", "--cam", str(tmp_path / "none")) == 0
    assert not list((tmp_path / "none").glob("*.png"))


def test_shards_partition_and_leftover_parts_are_merged_once(tmp_path: Path, bundle: Path) -> None:
    from xraytriage.scoring.discovery import iter_inputs, shard_of
    from xraytriage.scoring.distributed import part_path

    pngs = write_pngs(tmp_path / "in", 8)
    paths = list(iter_inputs(tmp_path / "in"))
    shards = [[p for p in paths if shard_of(p, 3) == r] for r in range(3)]
    assert sorted(p for shard in shards for p in shard) == sorted(paths)
    # Simulate a 2-rank run killed before rank 0 merged: rank parts hold some rows, one cut mid-line.
    full = tmp_path / "full.csv"
    assert run_score(tmp_path / "in", bundle, full) == 0
    lines = full.read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    out = tmp_path / "s.csv"
    part_path(out, 0).write_text(header + "".join(body[0:3]))
    part_path(out, 1).write_text(header + "".join(body[3:5]) + body[5][:10])
    out.write_text(header + body[0])  # rank 0 had merged one row before the kill
    assert run_score(tmp_path / "in", bundle, out) == 0
    rows = read_csv_rows(out)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in pngs)
    assert not list(tmp_path.glob("s.csv.rank*.part"))


def test_a_decoder_crash_is_isolated_to_its_file(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from xraytriage.scoring.dataset import StreamedScans

    real = StreamedScans.__getitem__

    def segfaulting(self, path):  # a native decoder dying on one file
        if Path(path).name == "img0003.png":
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(self, path)

    monkeypatch.setattr(StreamedScans, "__getitem__", segfaulting)  # inherited by the forked workers
    pngs = write_pngs(tmp_path / "in", 8)
    out = tmp_path / "s.csv"
    assert run_score(tmp_path / "in", bundle, out, "--workers", "2", "--batch-size", "2") == 1
    assert sorted(r["path"] for r in read_csv_rows(out)) == sorted(
        str(p) for p in pngs if p.name != "img0003.png"
    )
    errors = read_csv_rows(tmp_path / "s.errors.csv")
    assert [(Path(e["path"]).name, e["reason"]) for e in errors] == [("img0003.png", "decoder_crashed")]


@pytest.mark.timeout(120)
def test_workers_do_not_hang_after_the_parent_used_opencv_threads(tmp_path: Path, bundle: Path) -> None:
    import cv2

    cv2.setNumThreads(2)
    cv2.resize(np.zeros((2000, 2000), np.float32), (500, 500), interpolation=cv2.INTER_AREA)  # pool in use
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):  # large enough for OpenCV to parallelise the resize in the worker
        Image.fromarray(np.full((1800, 1500), 40 * i, np.uint8)).save(folder / f"big{i}.png")
    assert run_score(folder, bundle, tmp_path / "s.csv", "--workers", "1") == 0
    assert len(read_csv_rows(tmp_path / "s.csv")) == 3


def test_gpu_decode_bundle_scores_in_spawned_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gpu_decode: auto`` needs spawned workers (CUDA cannot start in a fork); without a GPU they must
    still decode on the CPU and give the rows of an in-process run."""
    contexts: list[object] = []
    original_init = torch.utils.data.DataLoader.__init__

    def recording_init(self, *args, **kwargs):
        contexts.append(kwargs.get("multiprocessing_context"))
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", recording_init)
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet18", weights=None, task="binary")
    model = build_model(cfg, num_outputs=1)
    bundle = tmp_path / "gpu.pt"
    pre = PreprocessConfig(image_size=32, gpu_decode="auto")
    save_bundle(bundle, model, cfg, pre, ["finding"], {"finding": 0.5}, task="binary")
    write_pngs(tmp_path / "in", 5)
    spawned, inline = tmp_path / "spawned.csv", tmp_path / "inline.csv"
    assert run_score(tmp_path / "in", bundle, spawned, "--workers", "1") == 0
    assert contexts and set(contexts) == {"spawn"}
    assert run_score(tmp_path / "in", bundle, inline, "--workers", "0") == 0
    got = {r["path"]: float(r["prob_finding"]) for r in read_csv_rows(spawned)}
    want = {r["path"]: float(r["prob_finding"]) for r in read_csv_rows(inline)}
    assert got.keys() == want.keys() and len(got) == 5
    assert all(abs(got[p] - want[p]) < 1e-5 for p in got)


def test_worker_start_method_is_spawn_only_for_gpu_decoding() -> None:
    from xraytriage.utils.runtime import worker_start_method

    assert worker_start_method("auto", 2) == {"multiprocessing_context": "spawn"}
    assert worker_start_method("auto", 0) == {}
    assert worker_start_method("off", 4) == {}
