"""Config validation: every mistake is one clear line naming the file, the key and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xraytriage.config import ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name: str, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id\n", encoding="utf-8")
    cfg = load_config(ROOT / "configs" / name, [f"data.manifest={manifest}"])
    assert cfg.model.arch


def test_unknown_key_names_file_key_and_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epocs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text and "train.epocs" in text and "epochs" in text
    assert "\n" not in text


def test_wrong_type_and_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(write(tmp_path, "train:\n  batch_size: many\n"))
    with pytest.raises(ConfigError, match=r"train\.lr.*greater than 0"):
        load_config(write(tmp_path, "train:\n  lr: -1\n"))
    with pytest.raises(ConfigError, match=r"preprocess\.normalization"):
        load_config(write(tmp_path, "preprocess:\n  normalization: gamma\n"))


def test_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"data\.manifest.*not found"):
        load_config(write(tmp_path, "data:\n  manifest: missing.csv\n"))
    with pytest.raises(ConfigError, match=r"model\.weights.*IMAGENET1K_V2"):
        load_config(write(tmp_path, "model:\n  weights: /no/such/weights.pth\n"))


def test_broken_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid YAML at line 2, column 12: mapping values"):
        load_config(write(tmp_path, "train:\n  epochs: 3: 4\n"))


def test_overrides_apply_and_validate(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id\n", encoding="utf-8")
    cfg = load_config(
        write(tmp_path, "train:\n  epochs: 3\n"),
        ["train.epochs=5", "data.labels=[a,b]", f"data.manifest={manifest}"],
    )
    assert cfg.train.epochs == 5 and cfg.data.labels == ["a", "b"]
    assert cfg.data.manifest == manifest.resolve()
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"unknown key 'train\.nope'"):
        load_config(None, ["train.nope=1"])


def test_amp_off_as_yaml_reads_it(tmp_path: Path) -> None:
    """YAML 1.1 reads a bare `off` as false; for the precision keys it means the documented "off" mode."""
    cfg = load_config(write(tmp_path, "train:\n  amp: off\n"), ["score.amp=off"])
    assert cfg.train.amp == "off" and cfg.score.amp == "off"
    with pytest.raises(ConfigError, match=r"key 'train\.amp'.*got True"):
        load_config(None, ["train.amp=on"])


def test_relative_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text("path,patient_id\n", encoding="utf-8")
    path = write(tmp_path / "sub", "data:\n  manifest: m.csv\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(path).data.manifest == (tmp_path / "sub" / "m.csv").resolve()


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.epochs=7", "evaluation.operating_point.target=0.95"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


def test_cli_broken_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "train: {epochs: [\n")
    proc = subprocess.run(
        [sys.executable, "-m", "xraytriage", "train", "--config", str(path), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in proc.stderr
    bad_key = write(tmp_path, "model:\n  archh: resnet50\n", "k.yaml")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xraytriage",
            "train",
            "--config",
            str(bad_key),
            "--out",
            str(tmp_path / "r2"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "model.archh" in proc.stderr and "Traceback" not in proc.stderr


def test_rsna_txv_config_fits_its_weights_and_the_rsna_adapter(tmp_path: Path) -> None:
    """configs/rsna_pneumonia_txv.yaml: the torchxrayvision weights' own input, on what `prepare
    rsna-pneumonia` writes (the adapter's real file layout: one row per box, IDs as file names)."""
    import pandas as pd

    from xraytriage.cli import main
    from xraytriage.data.manifest import read_manifest
    from xraytriage.models import pretrained

    root = tmp_path / "rsna"
    (root / "stage_2_train_images").mkdir(parents=True)
    ids = [f"{i:08x}-0000-0000-0000-000000000000" for i in range(40)]
    rows = [{"patientId": pid, "x": None, "Target": int(i % 4 == 0)} for i, pid in enumerate(ids)]
    rows += [{"patientId": ids[0], "x": 10.0, "Target": 1}]  # a second box of a positive image
    pd.DataFrame(rows).to_csv(root / "stage_2_train_labels.csv", index=False)
    for pid in ids:
        (root / "stage_2_train_images" / f"{pid}.dcm").write_bytes(b"")
    manifest = tmp_path / "manifest.csv"
    assert (
        main(["prepare", "rsna-pneumonia", "--root", str(root), "--out", str(manifest), "--no-headers"]) == 0
    )
    cfg = load_config(ROOT / "configs" / "rsna_pneumonia_txv.yaml", [f"data.manifest={manifest}"])
    frame = read_manifest(cfg.data.manifest, labels=cfg.data.labels)
    assert frame["pneumonia"].sum() == 10 and cfg.model.task == "binary"
    entry = pretrained.published(cfg.model.weights)
    assert entry is not None and entry.layout == pretrained.TORCHXRAYVISION
    pre = cfg.preprocess
    assert (
        (pre.mean, pre.std, pre.image_size)
        == (entry.mean, entry.std, entry.image_size)
        == (0.5, 1 / 2048, 512)
    )
    assert cfg.model.arch == "resnet50" and cfg.model.in_channels == 1
    assert pretrained.adopt_expected_input(pre, entry)[1:] == []  # nothing set against the weights
    assert cfg.train.amp == "auto" and cfg.train.device == "auto"  # a GPU when there is one
