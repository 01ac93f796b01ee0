"""Preprocessing cache: identical results, incremental rebuild, corruption detection and repair."""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from xraytriage.commands import cache as cache_cmd
from xraytriage.config import AugmentConfig, PreprocessConfig
from xraytriage.data import cache
from xraytriage.data.augment import build_augmentation
from xraytriage.data.dataset import ManifestScans
from xraytriage.data.manifest import read_manifest
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.io import UnreadableImage, load_image
from xraytriage.models import load_bundle

PP = PreprocessConfig(image_size=32)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("scans"), SyntheticSpec(n_patients=10, size=64, seed=5), progress=False
    )


@pytest.fixture
def dataset(scans: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A private copy of the scans (tests modify them) and their absolute paths."""
    shutil.copytree(scans.parent, tmp_path / "data")
    manifest = tmp_path / "data" / "manifest.csv"
    return manifest, read_manifest(manifest, leakage="ignore")["path"].tolist()


def _build(paths: list[str], cache_dir: Path, **kw) -> cache.BuildReport:
    kw.setdefault("workers", 1)
    return cache.build_cache(paths, cache_dir, kw.pop("pp", PP), progress=False, **kw)


def _shard(store: Path) -> Path:
    return sorted(store.glob("shard-*.bin"))[0]


def test_training_samples_identical_with_and_without_float32_cache(dataset, tmp_path: Path) -> None:
    manifest, paths = dataset
    _build(paths, tmp_path / "c", dtype="float32")
    source = cache.open_matching_cache(tmp_path / "c", PP)
    assert source is not None and len(source) == len(paths)
    frame = read_manifest(manifest, leakage="ignore")
    aug = AugmentConfig(probability=1.0, clahe_p=0.0)
    plain = ManifestScans(frame, ["finding"], PP, 1, build_augmentation(aug, 0), None, augment_seed=3)
    cached = ManifestScans(frame, ["finding"], PP, 1, build_augmentation(aug, 0), source, augment_seed=3)
    for item in [0, 5, (2 << 32) | 5, len(paths) - 1]:  # (epoch 2, scan 5) too
        a, b = plain[item], cached[item]
        assert torch.equal(a.image, b.image) and torch.allclose(a.target, b.target, equal_nan=True)


def test_quantised_cache_is_within_half_a_step(dataset, tmp_path: Path) -> None:
    _, paths = dataset
    for dtype, step in (("uint16", 1 / 65535), ("uint8", 1 / 255)):
        _build(paths, tmp_path / "c", dtype=dtype)
        source = cache.CacheSource(
            cache.store_dir(tmp_path / "c", PP, dtype),
            cache.read_index(cache.store_dir(tmp_path / "c", PP, dtype)),
            PP,
        )
        for i in (0, 3):
            got = source.lookup(paths[i])
            want = load_image(paths[i], PP)[0]
            assert got is not None and got.dtype == np.float32 and got.shape == (32, 32)
            assert np.abs(got - want).max() <= step / 2 + 1e-7


def test_cache_matches_only_its_own_pixel_config(dataset, tmp_path: Path) -> None:
    _, paths = dataset
    _build(paths, tmp_path / "c")
    assert cache.open_matching_cache(tmp_path / "c", PP.model_copy(update={"image_size": 48})) is None
    assert (
        cache.open_matching_cache(tmp_path / "c", PP.model_copy(update={"normalization": "minmax"})) is None
    )
    # mean/std are applied after the cache (image_to_tensor): the same store still serves.
    assert cache.open_matching_cache(tmp_path / "c", PP.model_copy(update={"mean": 0.4, "std": 0.3}))
    assert cache.open_matching_cache(tmp_path / "empty", PP) is None


def test_rebuild_decodes_only_new_or_changed_scans(dataset, tmp_path: Path) -> None:
    _, paths = dataset
    first = _build(paths[:-1], tmp_path / "c", workers=2)
    assert first.decoded == len(paths) - 1 and not first.unreadable
    again = _build(paths[:-1], tmp_path / "c")
    assert again.decoded == 0 and again.reused == len(paths) - 1

    shutil.copyfile(paths[1], paths[0])  # scan 0 now has other content (and a new mtime)
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = _build(paths, tmp_path / "c")
    assert third.decoded == 2 and third.reused == len(paths) - 2  # the changed one and the new one
    source = cache.open_matching_cache(tmp_path / "c", PP)
    assert np.array_equal(source.lookup(paths[0]), source.lookup(paths[1]))


def test_scan_changed_after_build_is_decoded_not_served_stale(dataset, tmp_path: Path) -> None:
    _, paths = dataset
    _build(paths, tmp_path / "c", dtype="float32")
    source = cache.open_matching_cache(tmp_path / "c", PP)
    shutil.copyfile(paths[2], paths[0])
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert source.lookup(paths[0]) is None
    assert np.array_equal(source(0, paths[0]), load_image(paths[2], PP)[0])
    outside = Path(paths[0]).with_name("not_in_cache.dcm")
    shutil.copyfile(paths[3], outside)
    assert np.array_equal(source(0, str(outside)), load_image(paths[3], PP)[0])


def test_corrupt_record_is_detected_never_served_and_repaired(dataset, tmp_path: Path) -> None:
    _, paths = dataset
    _build(paths, tmp_path / "c", dtype="float32")
    store = cache.store_dir(tmp_path / "c", PP, "float32")
    with open(_shard(store), "r+b") as fh:  # flip bytes inside record 1
        fh.seek(32 * 32 * 4 + 100)
        fh.write(b"\xff\xff\xff\x7f")
    source = cache.open_matching_cache(tmp_path / "c", PP)
    victim = next(p for p, e in source.index.entries.items() if e[3] == 1)
    assert source.lookup(victim) is None  # CRC mismatch: not served
    assert np.array_equal(source(0, victim), load_image(victim, PP)[0])

    verify = argparse.Namespace(cache_action="verify", cache_dir=tmp_path / "c", no_progress=True)
    assert cache_cmd.run(verify) == 1
    assert cache_cmd.run(verify) == 0
    repaired = _build(paths, tmp_path / "c", dtype="float32")
    assert repaired.decoded == 1 and repaired.reused == len(paths) - 1
    assert cache.open_matching_cache(tmp_path / "c", PP).lookup(victim) is not None

    # Without `verify`, the build's own CRC pass finds a corrupt record too.
    with open(_shard(store), "r+b") as fh:
        fh.seek(8)
        fh.write(b"\x00\x00\xc0\x7f")
    assert _build(paths, tmp_path / "c", dtype="float32").repaired == 1


def test_truncated_shard_and_corrupt_index_are_detected_and_repaired(dataset, tmp_path: Path) -> None:
    _, paths = dataset
    _build(paths, tmp_path / "c")
    store = cache.store_dir(tmp_path / "c", PP, "uint16")
    shard = _shard(store)
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size - 10)  # the last record is now incomplete
    source = cache.open_matching_cache(tmp_path / "c", PP)
    assert len(source) == len(paths) - 1
    report = _build(paths, tmp_path / "c", verify=False)
    assert report.repaired == 1 and report.decoded == 1

    (store / cache.INDEX_NAME).write_text('{"format": 1, "entries": {', encoding="utf-8")
    assert cache.open_matching_cache(tmp_path / "c", PP) is None  # never trusted
    report = _build(paths, tmp_path / "c")
    assert report.decoded == len(paths)
    assert len(cache.open_matching_cache(tmp_path / "c", PP)) == len(paths)
    assert len(list(store.glob("shard-*.bin"))) == 1  # the unreferenced old shards were removed


def test_unreadable_scans_are_listed_not_fatal(dataset, tmp_path: Path) -> None:
    _, paths = dataset
    bad = Path(paths[0]).with_name("broken.dcm")
    bad.write_bytes(b"not a dicom at all" * 10)
    report = _build([*paths, str(bad)], tmp_path / "c")
    assert list(report.unreadable) == [str(bad)] and report.unreadable[str(bad)][0] == "not_an_image"
    assert _build([*paths, str(bad)], tmp_path / "c").decoded == 0  # not retried while unchanged
    source = cache.open_matching_cache(tmp_path / "c", PP)
    with pytest.raises(UnreadableImage) as err:
        source(0, str(bad))
    assert err.value.reason == "not_an_image"


def test_cli_build_and_info(dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest, paths = dataset
    parser = argparse.ArgumentParser()
    cache_cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "cache",
            "build",
            "--manifest",
            str(manifest),
            "--size",
            "32",
            "--cache-dir",
            str(tmp_path / "c"),
            "--workers",
            "1",
            "--quiet",
        ]
    )
    assert args.handler(args) == 0
    assert f"{len(paths)} cached, {len(paths)} decoded now" in capsys.readouterr().out
    assert cache.open_matching_cache(tmp_path / "c", PP) is not None
    args = parser.parse_args(["cache", "info", str(tmp_path / "c")])
    assert args.handler(args) == 0
    assert f"{len(paths)} images 32px uint16" in capsys.readouterr().out
    args = parser.parse_args(["cache", "build", "--size", "32"])
    assert args.handler(args) == 2  # no manifest and no cache dir: a clear usage error


def test_training_is_identical_with_and_without_cache(
    dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from xraytriage.config import load_config
    from xraytriage.training import engine

    manifest, paths = dataset
    _build(paths, tmp_path / "c", dtype="float32")
    common = [
        f"data.manifest={manifest}",
        "data.num_workers=0",
        "model.arch=resnet18",
        "model.task=binary",
        "preprocess.image_size=32",
        "train.batch_size=8",
        "train.epochs=1",
        "train.histogram_every_epochs=0",
        "evaluation.bootstrap_iterations=0",
        "evaluation.min_group_size=1",
        "train.threads=1",
    ]
    caplog.set_level("INFO", logger="xraytriage.data.cache")
    plain = engine.train(load_config(None, common), tmp_path / "plain")
    cached = engine.train(
        load_config(None, [*common, f"data.cache_dir={tmp_path / 'c'}", "data.cache_dtype=float32"]),
        tmp_path / "cached",
    )
    assert "using preprocessing cache" in caplog.text
    timing = ("train_images_per_sec", "train_seconds")
    strip = [{k: v for k, v in row.items() if k not in timing} for row in (*plain.history, *cached.history)]
    assert repr(strip[0]) == repr(strip[1])  # repr: nan == nan
    a, b = load_bundle(tmp_path / "plain" / "model.pt"), load_bundle(tmp_path / "cached" / "model.pt")
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_read_verification_once_per_record_always_and_off(dataset, tmp_path: Path, monkeypatch) -> None:
    _, paths = dataset
    _build(paths, tmp_path / "c")
    store = cache.store_dir(tmp_path / "c", PP, "uint16")
    calls: list[int] = []
    real_crc = cache.zlib.crc32

    def counting_crc(data, *args):
        calls.append(1)
        return real_crc(data, *args)

    monkeypatch.setattr(cache.zlib, "crc32", counting_crc)
    expected = {"once": 2, "always": 6, "off": 0, True: 6, False: 0}  # 2 records read 3 times each
    for mode, crcs in expected.items():
        source = cache.open_matching_cache(tmp_path / "c", PP, verify_reads=mode)
        calls.clear()
        for _ in range(3):
            assert all(source.lookup(p) is not None for p in paths[:2])
        assert len(calls) == crcs, mode
    with pytest.raises(ValueError, match="verify_reads"):
        cache.CacheSource(store, cache.read_index(store), PP, verify_reads="sometimes")

    # A fresh process (a pickled copy, as a spawned DataLoader worker gets) verifies afresh.
    source = cache.open_matching_cache(tmp_path / "c", PP)
    source.lookup(paths[0])
    clone = pickle.loads(pickle.dumps(source))
    calls.clear()
    assert clone.lookup(paths[0]) is not None and len(calls) == 1


def test_corrupt_record_fails_its_first_read_in_every_mode_that_verifies(
    dataset, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, paths = dataset
    _build(paths, tmp_path / "c")
    store = cache.store_dir(tmp_path / "c", PP, "uint16")
    with open(_shard(store), "r+b") as fh:  # damage record 2
        fh.seek(2 * 32 * 32 * 2 + 40)
        fh.write(b"\x12\x34")
    for mode in ("once", "always"):
        source = cache.open_matching_cache(tmp_path / "c", PP, verify_reads=mode)
        victim = next(p for p, e in source.index.entries.items() if e[3] == 2)
        caplog.clear()
        assert source.lookup(victim) is None and source.lookup(victim) is None  # never served
        assert caplog.text.count("CRC mismatch") == 1  # remembered: logged once, not re-hashed
        assert np.array_equal(source(0, victim), load_image(victim, PP)[0])  # decoded instead
        intact = next(p for p, e in source.index.entries.items() if e[3] == 1)
        assert source.lookup(intact) is not None
    # "always" also catches damage that happens after a record's first (good) read; "once" is
    # documented not to (docs/cache.md): this pins the difference down.
    _build(paths, tmp_path / "c")  # repairs record 2 (re-decoded into a new shard)
    always = cache.open_matching_cache(tmp_path / "c", PP, verify_reads="always")
    once = cache.open_matching_cache(tmp_path / "c", PP, verify_reads="once")
    first = sorted(store.glob("shard-*.bin"))[0]
    target = next(p for p, e in always.index.entries.items() if e[2] == int(first.stem[6:]) and e[3] == 0)
    assert always.lookup(target) is not None and once.lookup(target) is not None
    with open(first, "r+b") as fh:
        fh.seek(10)
        fh.write(b"\xab\xcd")
    assert always.lookup(target) is None
    assert once.lookup(target) is not None


def test_cache_dtype_selects_the_store(dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, paths = dataset
    _build(paths, tmp_path / "c", dtype="uint16")
    _build(paths, tmp_path / "c", dtype="float32")
    assert cache.open_matching_cache(tmp_path / "c", PP).index.dtype == "float32"  # no preference: best
    for dtype in ("uint16", "float32"):
        source = cache.open_matching_cache(tmp_path / "c", PP, dtype=dtype)
        assert source.index.dtype == dtype and source.store.name.endswith(dtype)
        assert source.lookup(paths[0]).dtype == np.float32
    caplog.set_level("WARNING", logger="xraytriage.data.cache")
    assert cache.open_matching_cache(tmp_path / "c", PP, dtype="uint8") is None  # required, not swapped
    assert "data.cache_dtype is uint8" in caplog.text and "float32/uint16" in caplog.text
    assert "cache build --dtype uint8" in caplog.text
    assert cache.open_matching_cache(tmp_path / "empty", PP, dtype="uint8") is None
    with pytest.raises(cache.CacheError, match="not supported"):
        cache.open_matching_cache(tmp_path / "c", PP, dtype="float16")


def test_cli_build_takes_the_dtype_from_the_config(dataset, tmp_path: Path) -> None:
    manifest, paths = dataset
    config = tmp_path / "train.yaml"
    config.write_text(
        f"data:\n  manifest: {manifest}\n  cache_dir: {tmp_path / 'c'}\n  cache_dtype: uint8\n"
        "preprocess:\n  image_size: 32\n",
        encoding="utf-8",
    )
    parser = argparse.ArgumentParser()
    cache_cmd.register(parser.add_subparsers())

    def build(*extra: str) -> None:
        args = parser.parse_args(
            ["cache", "build", "--config", str(config), "--workers", "1", "--quiet", *extra]
        )
        assert args.handler(args) == 0

    build()
    assert [p.name.rsplit("-", 1)[1] for p in sorted((tmp_path / "c").glob("pp-*"))] == ["uint8"]
    build("--dtype", "uint16")  # an explicit --dtype wins
    build("data.cache_dtype=float32")  # and so does an override of the key
    assert sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "c").glob("pp-*")) == [
        "float32",
        "uint16",
        "uint8",
    ]
    source = cache.open_matching_cache(tmp_path / "c", PP, dtype="uint8")
    assert source is not None and len(source) == len(paths)
