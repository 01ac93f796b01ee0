#!/usr/bin/env python3
"""Validated scope: does the check catch what it should, and what does it cost? One run, three parts.

1. Header rules: held-out synthetic demo scans re-written with one attribute outside the recorded
   scope each (view, age below/above, modality, body part, manufacturer, site, photometric, pixel
   spacing, rows/columns), scored with ``score``: every planted case must be caught by its rule, and
   the untouched copies must stay in scope.
2. Image check: a ResNet-50 trained (here, briefly) on the real NIH sample (``../shared/data/
   nih1000_64px``); AUROC of ``ood_score`` separating the NIH test scans (in scope) from real
   non-chest images (pydicom's CT/MR slices and other test images, pydicom-data's extremity CR,
   matplotlib's photographs), with its 95% interval, and the share of each caught at the threshold.
   No real lateral radiograph is available offline; laterals are caught by the view rule (part 1).
3. Cost: ``score`` throughput with the scope check on vs off (``scope.enabled=false``: no features, no
   rules) on the same scans in the same run, alternating, median of ``--repeats``; ratio.

    python scripts/bench_scope.py --epochs 3 --throughput-scans 200 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import torch

from xraytriage.config import ScopeConfig, load_config
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.models import load_bundle
from xraytriage.scope import ValidatedScope, reason_rules
from xraytriage.scoring import ScoreOptions, score

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih1000_64px"

# rule -> (tags to set, pixel change); each a separate copy of one held-out scan
PLANTS: dict[str, tuple[dict[str, object], str | None]] = {
    "view": ({"ViewPosition": "LL"}, None),
    "age (below)": ({"PatientAge": "007Y"}, None),
    "age (above)": ({"PatientAge": "120Y"}, None),
    "modality": ({"Modality": "CT"}, None),
    "body_part": ({"BodyPartExamined": "ABDOMEN"}, None),
    "manufacturer": ({"Manufacturer": "Unseen Vendor"}, None),
    "site": ({"InstitutionName": "Unseen Hospital"}, None),
    "pixel_spacing": ({"PixelSpacing": [0.05, 0.05], "ImagerPixelSpacing": [0.05, 0.05]}, None),
    "photometric": ({}, "rgb"),
    "rows/columns": ({}, "half"),
}


def _options(
    bundle: Path, inp: Path, out: Path, scope: ScopeConfig | None = None, **kw: object
) -> ScoreOptions:
    return ScoreOptions(model=bundle, input=inp, out=out, progress=False, scope=scope, **kw)  # type: ignore[arg-type]


def _plant(template: Path, dest: Path, tags: dict[str, object], pixels: str | None) -> None:
    ds = pydicom.dcmread(template)
    ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed else None
    for key, value in tags.items():
        setattr(ds, key, value)
    if pixels is not None:
        arr = ds.pixel_array
        if pixels == "half":
            arr = np.ascontiguousarray(arr[::2, ::2])
            ds.Rows, ds.Columns = arr.shape
        else:  # grey -> RGB, 8 bits
            grey = (arr.astype(np.float64) / max(float(arr.max()), 1.0) * 255).astype(np.uint8)
            arr = np.repeat(grey[..., None], 3, axis=2)
            ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit, ds.PixelRepresentation = 7, 0
            for keyword in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope"):
                if keyword in ds:
                    delattr(ds, keyword)
        ds.PixelData = arr.tobytes()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(dest)


def header_rules(work: Path, epochs: int) -> dict[str, object]:
    """Part 1: a bundle trained on synthetic DICOMs; one planted copy per rule."""
    from xraytriage.training import engine

    manifest = generate_dataset(
        work / "synthetic", SyntheticSpec(n_patients=60, size=96, seed=1), progress=False
    )
    cfg = load_config(
        None,
        [
            f"data.manifest={manifest}",
            "data.num_workers=0",
            "model.arch=resnet18",
            "model.task=binary",
            "preprocess.image_size=64",
            f"train.epochs={epochs}",
            "train.batch_size=16",
            "evaluation.bootstrap_iterations=0",
        ],
    )
    engine.train(cfg, work / "synthetic_run")
    bundle = work / "synthetic_run" / "model.pt"
    frame = pd.read_csv(manifest)
    test = frame[frame["split"] == "test"]
    template = manifest.parent / test["path"].iloc[0]
    folder = work / "planted"
    folder.mkdir()
    for k, (tags, pixels) in enumerate(PLANTS.values()):
        _plant(template, folder / f"plant{k:02d}.dcm", tags, pixels)
    _plant(template, folder / "control.dcm", {}, None)
    # the image check is measured in part 2: here only the header rules decide
    scope = ScopeConfig.model_validate({"ood": False})
    score(_options(bundle, folder, work / "planted.csv", scope, workers=0))
    rows = pd.read_csv(work / "planted.csv", dtype=str, keep_default_na=False)
    by_name = {Path(p).name: r for p, r in zip(rows["path"], rows.to_dict("records"))}
    caught = {}
    for k, rule in enumerate(PLANTS):
        row = by_name.get(f"plant{k:02d}.dcm")
        rules = reason_rules(row["scope_reasons"]) if row is not None else []
        want = {"age (below)": "age", "age (above)": "age", "rows/columns": "rows"}.get(rule, rule)
        caught[rule] = (
            row is not None and row["in_scope"] == "0" and want in rules,
            row["scope_reasons"] if row else "not scored",
        )
    control = by_name["control.dcm"]["in_scope"] == "1"
    return {"caught": caught, "control_in_scope": control}


def _non_chest_images(folder: Path) -> list[Path]:
    """Real images that are not frontal chest radiographs, from installed packages only."""
    import matplotlib
    from pydicom.data import get_testdata_file

    folder.mkdir()
    names = [
        "CT_small.dcm",
        "MR_small.dcm",
        "liver_1frame.dcm",
        "rtdose_1frame.dcm",
        "examples_ybr_color.dcm",
        "examples_rgb_color.dcm",
        "examples_palette.dcm",
        "SC_rgb_small_odd.dcm",
        "US1_UNCR.dcm",
        "RG3_UNCR.dcm",
        "emri_small.dcm",
        "OBXXXX1A.dcm",
        "693_UNCR.dcm",
        "JPGExtended.dcm",
        "SC_rgb.dcm",
    ]
    out = []
    for name in names:
        try:
            src = get_testdata_file(name, download=False)
        except Exception:
            src = None
        if src:
            out.append(Path(shutil.copyfile(src, folder / name)))
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        if (sample / name).is_file():
            out.append(Path(shutil.copyfile(sample / name, folder / name)))
    return out


def image_check(work: Path, epochs: int) -> dict[str, object] | None:
    """Part 2: AUROC of ood_score, NIH test scans vs non-chest images."""
    from xraytriage.evaluation.rates import auroc_estimate
    from xraytriage.training import engine

    if not SHARED.is_dir():
        print(f"part 2 skipped: {SHARED} is not present")
        return None
    raw = pd.read_csv(SHARED / "labels_with_demographics.csv")
    manifest = pd.DataFrame(
        {
            "path": [str(SHARED / p) for p in raw["path"]],
            "patient_id": raw["Patient ID"].astype(str),
            "split": raw["split"].replace({"valid": "val"}),
            "sex": raw["Patient Gender"],
            "age": raw["Patient Age"],
            "view": raw["View Position"],
            "finding": (raw["Finding Labels"] != "No Finding").astype(int),
        }
    )
    # the sample's own folders share 8 patients between splits: keep each patient in one split
    first = manifest.groupby("patient_id")["split"].transform("first")
    manifest["split"] = first
    manifest.to_csv(work / "nih.csv", index=False)
    cfg = load_config(
        None,
        [
            f"data.manifest={work / 'nih.csv'}",
            "data.num_workers=0",
            "model.arch=resnet50",
            "model.task=binary",
            "preprocess.image_size=64",
            f"train.epochs={epochs}",
            "train.batch_size=32",
            "evaluation.bootstrap_iterations=0",
        ],
    )
    engine.train(cfg, work / "nih_run")
    bundle = work / "nih_run" / "model.pt"
    test = work / "nih_test.txt"
    test.write_text("\n".join(manifest.loc[manifest["split"] == "test", "path"]) + "\n")
    others = _non_chest_images(work / "non_chest")
    lists = work / "all.txt"
    lists.write_text(test.read_text() + "\n".join(map(str, others)) + "\n")
    score(_options(bundle, lists, work / "nih_scores.csv", workers=0))
    rows = pd.read_csv(work / "nih_scores.csv", keep_default_na=False, na_values={"ood_score": [""]})
    is_ood = rows["path"].isin([str(p) for p in others]).to_numpy()
    ood = rows["ood_score"].to_numpy(float)
    codes = np.arange(len(rows))
    est = auroc_estimate(is_ood.astype(float), ood, codes, 0.95)
    threshold = ValidatedScope.from_payload(load_bundle(bundle).scope).ood.threshold  # type: ignore[union-attr]
    over = ood > threshold
    outside = (rows["in_scope"].astype(str) == "0").to_numpy()
    return {
        "caught_any_rule": float(outside[is_ood].mean()),
        "auroc": est,
        "n_in": int((~is_ood).sum()),
        "n_out": int(is_ood.sum()),
        "caught": float(over[is_ood].mean()),
        "in_flagged": float(over[~is_ood].mean()),
        "threshold": threshold,
        "images": sorted(Path(p).name for p in rows.loc[is_ood, "path"]),
        "missed": sorted(Path(p).name for p in rows.loc[is_ood & ~over, "path"]),
    }


def throughput(work: Path, n_scans: int, repeats: int, workers: int) -> dict[str, object]:
    """Part 3: score with the check on vs off, alternating, same scans, same process."""
    from xraytriage.config import ModelConfig, PreprocessConfig
    from xraytriage.models import build_model, save_bundle
    from xraytriage.scope.collect import FeaturePass, ScopeRecorder

    manifest = generate_dataset(
        work / "speed", SyntheticSpec(n_patients=n_scans // 2 + 20, size=512, seed=2), progress=False
    )
    frame = pd.read_csv(manifest)
    frame["path"] = [str(manifest.parent / p) for p in frame["path"]]
    torch.manual_seed(0)
    model_cfg = ModelConfig(arch="resnet50", weights=None, task="binary")
    model = build_model(model_cfg, 1).eval()
    pre = PreprocessConfig(image_size=224)
    reference = frame[frame["split"] != "test"].head(120)
    features = FeaturePass(model, pre, 1, torch.device("cpu"), batch_size=16)
    scope = ScopeRecorder(ScopeConfig(), features).record(
        reference[reference["split"] == "train"], reference[reference["split"] == "val"], {"finding": []}
    )
    bundle = work / "speed.pt"
    save_bundle(
        bundle, model, model_cfg, pre, ["finding"], {"finding": 0.5}, "binary", scope=scope.to_payload()
    )
    inp = work / "speed.txt"
    inp.write_text("\n".join(frame["path"].head(n_scans)) + "\n")
    settings = {"on": ScopeConfig(), "off": ScopeConfig.model_validate({"enabled": False})}
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for mode, cfg in settings.items():  # warm-up: the ONNX graphs of both modes exported and cached
        score(_options(bundle, inp, work / f"warm_{mode}.csv", cfg, workers=workers))
    for r in range(repeats):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            out = work / f"run_{mode}_{r}.csv"
            started = time.perf_counter()
            summary = score(_options(bundle, inp, out, settings[mode], workers=workers))
            rates[mode].append(summary.scored / (time.perf_counter() - started))
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    pairs = [1 - a / b for a, b in zip(rates["on"], rates["off"])]
    return {
        "on": on,
        "off": off,
        "cost": statistics.median(pairs),
        "rates": rates,
        "engine": summary.engine,
        **components(bundle, frame["path"].head(64).tolist()),
    }


def components(bundle_path: Path, paths: list[str], rounds: int = 7) -> dict[str, float]:
    """The check's own parts on one batch of 32, in this process: the ONNX forward pass with the
    features output vs without (same input, alternating, median), and the rules + distance."""
    from xraytriage.io import load_image
    from xraytriage.scope import ScanFacts, ScopeChecker
    from xraytriage.scoring.engine import prepare_model, select_runner

    bundle = load_bundle(bundle_path)
    model = prepare_model(bundle.model, torch.device("cpu"))
    shape = {"in_channels": 1, "image_size": 224, "weights_id": bundle.model_id}
    plain = select_runner(model, torch.device("cpu"), "auto", **shape)
    with_features = select_runner(model, torch.device("cpu"), "auto", features=True, **shape)
    x = torch.randn(32, 1, 224, 224)
    times: dict[str, list[float]] = {"plain": [], "features": []}
    for _ in range(rounds):
        for name, runner in (("plain", plain), ("features", with_features)):
            started = time.perf_counter()
            out = runner.forward(x)
            times[name].append(time.perf_counter() - started)
    features = out[1]
    facts = [ScanFacts.from_meta(load_image(p, bundle.preprocess)[1]) for p in paths[:32]]
    checker = ScopeChecker(ValidatedScope.from_payload(bundle.scope))
    check = []
    for _ in range(rounds):
        started = time.perf_counter()
        checker.check_batch(facts, features)
        check.append(time.perf_counter() - started)
    plain_s, features_s = statistics.median(times["plain"]), statistics.median(times["features"])
    return {
        "forward_plain_ms": plain_s * 1000,
        "forward_features_ms": features_s * 1000,
        "check_ms": statistics.median(check) * 1000,
        "component_cost": (features_s - plain_s + statistics.median(check)) / plain_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3, help="training epochs for parts 1 and 2")
    parser.add_argument("--throughput-scans", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 3")
    args = parser.parse_args()
    os.environ.setdefault("XRAYTRIAGE_CACHE_DIR", tempfile.mkdtemp(prefix="bench-scope-cache-"))
    parts = {int(p) for p in args.parts.split(",")}
    print(
        f"{time.strftime('%Y-%m-%d')} | {platform.machine()} {os.cpu_count()} CPU | torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-scope-") as tmp:
        work = Path(tmp)
        if 1 in parts:
            result = header_rules(work, args.epochs)
            caught = result["caught"]
            n_caught = sum(ok for ok, _ in caught.values())  # type: ignore[union-attr]
            print(
                f"\n1. header rules: {n_caught}/{len(caught)} planted cases caught; "
                f"unchanged copy in scope: {result['control_in_scope']}"
            )
            for rule, (ok, reasons) in caught.items():  # type: ignore[union-attr]
                print(f"   {'caught' if ok else 'MISSED'}  {rule:<14} {reasons[:110]}")
        if 2 in parts:
            ood = image_check(work, args.epochs)
            if ood is not None:
                est = ood["auroc"]
                print(
                    f"\n2. image check: AUROC {est.value:.3f} (95% CI {est.ci_low:.3f}-{est.ci_high:.3f}) "
                    f"separating {ood['n_in']} NIH test scans from {ood['n_out']} non-chest images; "
                    f"at the threshold {ood['threshold']:.1f}: {ood['caught']:.0%} of non-chest caught, "
                    f"{ood['in_flagged']:.1%} of NIH test scans flagged"
                )
                print(
                    f"   with the header rules too (a PNG-trained bundle records view/sex/age only): "
                    f"{ood['caught_any_rule']:.0%} of non-chest images out of scope"
                )
                print(f"   images: {', '.join(ood['images'])}")  # type: ignore[arg-type]
                print(f"   missed: {', '.join(ood['missed']) or '-'}")  # type: ignore[arg-type]
        if 3 in parts:
            cost = throughput(work, args.throughput_scans, args.repeats, args.workers)
            print(
                f"\n3. throughput ({args.throughput_scans} DICOMs 512x512 -> ResNet-50 at 224, "
                f"{args.workers} workers, {cost['engine']}): scope on {cost['on']:.2f} scans/s, "
                f"off {cost['off']:.2f} scans/s; cost {cost['cost']:.1%} (median over {args.repeats} "
                "alternating pairs; "
                f"runs {cost['rates']})"
            )
            print(
                f"   per batch of 32: forward {cost['forward_plain_ms']:.0f} ms without features, "
                f"{cost['forward_features_ms']:.0f} ms with; rules + distance {cost['check_ms']:.1f} ms; "
                f"the check's share of the forward pass {cost['component_cost']:.1%}"
            )


if __name__ == "__main__":
    main()
