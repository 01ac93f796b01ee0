"""Synthetic, standard-conforming chest-radiograph-like DICOMs for the demo and the tests.

The files exercise the decoding paths real hospitals send (DX/CR, 12-16 bits stored, MONOCHROME1 and
MONOCHROME2, rescale slope/intercept, window center/width, uncompressed / RLE / JPEG 2000) and carry
PatientSex, PatientAge, ViewPosition and InstitutionName. The finding (a nodule-like opacity) is
deliberately fainter in women, so the fairness report has a real miss-rate gap to find.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from tqdm import tqdm

from xraytriage.utils.atomic import atomic_path, atomic_write
from xraytriage.utils.csv_safety import safe_frame
from xraytriage.utils.progress import show_progress

SOP_CLASS = {
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
}
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"  # Digital X-Ray Image Storage - For Processing
SITES = {"SITE-A": "Acme Imaging", "SITE-B": "Borealis Medical", "SITE-C": "Cygnus Radiology"}
SYNTAXES = (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless)
# Nodule contrast relative to lung tissue, per sex: the deliberate subgroup gap.
NODULE_CONTRAST = {"M": 0.6, "F": 0.22}


@dataclass(frozen=True)
class SyntheticSpec:
    n_patients: int = 300
    max_images_per_patient: int = 2
    size: int = 256
    prevalence: float = 0.4
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=[f"xraytriage-demo-{seed}", *map(str, parts)])


def _chest_phantom(rng: np.random.Generator, size: int, has_nodule: bool, contrast: float) -> np.ndarray:
    """Attenuation map in [0, 1] (1 = dense): body, dark lungs, mediastinum, ribs, noise, optional nodule."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx = 0.5 + rng.normal(0, 0.015)
    body = np.clip(1.0 - ((xx - cx) / 0.47) ** 2 - ((yy - 0.55) / 0.6) ** 2, 0, 1) ** 0.3
    img = 0.15 + 0.55 * body
    lungs = np.zeros_like(img)
    lung_params = []
    for side in (-1, 1):
        lx = cx + side * (0.2 + rng.normal(0, 0.01))
        ly, rx, ry = 0.47 + rng.normal(0, 0.01), 0.13 + rng.normal(0, 0.008), 0.27 + rng.normal(0, 0.01)
        lung = np.clip(1.0 - ((xx - lx) / rx) ** 2 - ((yy - ly) / ry) ** 2, 0, 1) ** 0.5
        lungs = np.maximum(lungs, lung)
        lung_params.append((lx, ly, rx, ry))
    img -= 0.38 * lungs
    for k in range(9):  # ribs: faint bright arcs across the lungs
        y0 = 0.24 + 0.055 * k + rng.normal(0, 0.004)
        arc = y0 + 0.12 * (xx - cx) ** 2 * 4
        img += 0.06 * np.exp(-(((yy - arc) / 0.009) ** 2)) * (lungs > 0)
    img += 0.25 * np.exp(-(((xx - cx) / 0.06) ** 2)) * (yy > 0.25) * (yy < 0.8)  # mediastinum/spine
    if has_nodule:
        lx, ly, rx, ry = lung_params[rng.integers(0, 2)]
        ang, rad = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 0.45))
        nx, ny = lx + rad * rx * np.cos(ang), ly + rad * ry * np.sin(ang)
        sigma = rng.uniform(0.04, 0.065)
        img += contrast * np.exp(-(((xx - nx) ** 2 + (yy - ny) ** 2) / (2 * sigma**2)))
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


# SNOMED CT codes of PS3.16 CID 4031 (anatomic region) and CID 4010 (DX view)
CHEST = ("816094009", "SCT", "Chest")
VIEW_CODES = {"PA": ("399182009", "SCT", "postero-anterior"), "AP": ("399348003", "SCT", "antero-posterior")}


def _patient_study_series(
    ds: Dataset, patient: dict[str, object], image_no: int, index: int, seed: int
) -> None:
    """Patient, General Study, General Series and General Image attributes (PS3.3 C.7.1.1, C.7.2.1,
    C.7.3.1, C.7.6.1), type 2 ones present even when empty as the standard requires."""
    ds.PatientName = f"Demo^Patient{patient['n']:04d}"  # present in the file; must never reach outputs
    ds.PatientID = str(patient["patient_id"])
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = str(patient["sex"])
    ds.PatientAge = f"{int(patient['age']):03d}Y"
    ds.StudyInstanceUID = _uid(seed, "study", patient["patient_id"], image_no)
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"S{index:05d}"
    ds.AccessionNumber = f"ACC{seed:03d}{index:06d}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ViewPosition = str(patient["views"][image_no])
    ds.BodyPartExamined = "CHEST"
    ds.PatientOrientation = ["L", "F"]  # rows run to the patient's left, columns to the feet
    ds.AnatomicRegionSequence = [_code_item(*CHEST)]
    ds.ImageLaterality = "U"  # the chest is unpaired
    ds.LossyImageCompression = "00"


def _pixel_module(ds: Dataset, stored: np.ndarray, bits: int) -> None:
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0


def _dx_attributes(ds: Dataset, mono1: bool, for_presentation: bool) -> None:
    """DX Series, DX Image, DX Detector, DX Positioning and Acquisition Context attributes (PS3.3
    C.8.11.1-C.8.11.5, C.7.6.14). PresentationIntentType says whether the image is meant to be read."""
    ds.PresentationIntentType = "FOR PRESENTATION" if for_presentation else "FOR PROCESSING"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelIntensityRelationship = "LOG"
    # +1: lower stored values mean less X-ray intensity (denser tissue), as in MONOCHROME1 here
    ds.PixelIntensityRelationshipSign = 1 if mono1 else -1
    ds.BurnedInAnnotation = "NO"
    ds.DetectorType = "SCINTILLATOR"
    ds.PositionerType = ""
    ds.AcquisitionContextSequence = []
    ds.ViewCodeSequence = [_code_item(*VIEW_CODES[str(ds.ViewPosition)])]


def _to_dicom(
    att: np.ndarray,
    rng: np.random.Generator,
    spec: SyntheticSpec,
    patient: dict[str, object],
    index: int,
    image_no: int,
    kind: str | None = None,
) -> tuple[Dataset, dict[str, object]]:
    bits = int(rng.choice([12, 14, 16]))
    top = 2**bits - 1
    mono1 = bool(rng.random() < 0.5)
    slope = float(rng.choice([1.0, 0.5, 2.0]))
    intercept = float(rng.choice([0.0, -1024.0, 100.0]))
    stored = np.clip(np.rint(att * (0.9 * top) + 0.05 * top), 0, top).astype(np.uint16)
    if mono1:  # MONOCHROME1: high stored values are displayed dark, so dense tissue is stored low
        stored = (top - stored).astype(np.uint16)
    modality = stored.astype(np.float64) * slope + intercept
    lo, hi = float(modality.min()), float(modality.max())
    syntax = SYNTAXES[index % len(SYNTAXES)]
    kind = kind or ("DX" if index % 2 == 0 else "CR")
    seed = spec.seed

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS[kind]
    ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, "sop", index)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = SOP_CLASS[kind]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = kind
    _patient_study_series(ds, patient, image_no, index, seed)
    ds.SeriesInstanceUID = _uid(seed, "series", index)
    ds.InstitutionName = SITES[str(patient["site"])]
    ds.Manufacturer = str(patient["manufacturer"])
    ds.ImagerPixelSpacing = [f"{0.143 * 2048 / spec.size:.6g}"] * 2  # a DS holds 16 characters at most
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    _pixel_module(ds, stored, bits)
    if kind == "DX":  # DX Image module (PS3.3 C.8.11.3): rescale is the identity, intent "for presentation"
        slope, intercept = 1.0, 0.0
        modality = stored.astype(np.float64)
        lo, hi = float(modality.min()), float(modality.max())
        _dx_attributes(ds, mono1, for_presentation=True)
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.BurnedInAnnotation = "NO"
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{(lo + hi) / 2:.1f}"
    ds.WindowWidth = f"{max(hi - lo, 2.0):.1f}"
    ds.PresentationLUTShape = "INVERSE" if mono1 else "IDENTITY"
    ds.PixelData = stored.tobytes()
    if syntax != ExplicitVRLittleEndian:
        ds.compress(
            syntax,
            encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "",
            generate_instance_uid=False,
        )
    info = {
        "bits": bits,
        "photometric": ds.PhotometricInterpretation,
        "syntax": str(syntax),
        "modality": kind,
    }
    return ds, info


def _split_for(patient_id: str, seed: int, fractions: tuple[float, float, float]) -> str:
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2**64
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def generate_dataset(out_dir: str | Path, spec: SyntheticSpec | None = None, progress: bool = True) -> Path:
    """Write ``out_dir/images/*.dcm`` and ``out_dir/manifest.csv``; returns the manifest path.

    Deterministic for ``spec.seed``: the same seed gives byte-identical pixel data and the same manifest.
    """
    spec = spec or SyntheticSpec()
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    rows = []
    index = 0
    manufacturers = ["Acme DR", "Borealis CR", "Cygnus DR"]
    for n in tqdm(
        range(spec.n_patients), desc="demo DICOMs", unit="patient", disable=not show_progress(progress)
    ):
        pid = f"DEMO-{spec.seed:03d}-{n:05d}"
        n_images = int(rng.integers(1, spec.max_images_per_patient + 1))
        site = list(SITES)[int(rng.integers(0, len(SITES)))]
        patient = {
            "n": n,
            "patient_id": pid,
            "sex": "F" if rng.random() < 0.5 else "M",
            "age": int(np.clip(rng.normal(58, 16), 18, 95)),
            "site": site,
            "manufacturer": manufacturers[list(SITES).index(site)],
            "views": ["PA" if rng.random() < 0.65 else "AP" for _ in range(n_images)],
        }
        split = _split_for(pid, spec.seed, spec.split_fractions)
        for image_no in range(n_images):
            has_nodule = bool(rng.random() < spec.prevalence)
            contrast = NODULE_CONTRAST[str(patient["sex"])] * float(rng.uniform(0.8, 1.2))
            att = _chest_phantom(rng, spec.size, has_nodule, contrast)
            ds, info = _to_dicom(att, rng, spec, patient, index, image_no)
            name = f"{pid}_{image_no}.dcm"
            with atomic_path(images / name) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
            rows.append(
                {
                    "path": f"images/{name}",
                    "patient_id": pid,
                    "study_id": str(ds.StudyInstanceUID),
                    "finding": int(has_nodule),
                    "split": split,
                    "sex": patient["sex"],
                    "age": patient["age"],
                    "view": patient["views"][image_no],
                    "site": site,
                    "manufacturer": patient["manufacturer"],
                    "photometric": info["photometric"],
                    "transfer_syntax": info["syntax"],
                }
            )
            index += 1
    manifest = out / "manifest.csv"
    frame = pd.DataFrame(rows)
    atomic_write(manifest, lambda fh: safe_frame(frame).to_csv(fh, index=False))
    return manifest


# ---------------------------------------------------------------------------- out-of-scope variants
SCOPE_VARIANTS = ("for_processing", "derived_secondary_capture", "burned_in_annotation")


def _variant_patient(seed: int) -> dict[str, object]:
    return {
        "n": 9000,
        "patient_id": f"DEMO-{seed:03d}-VARIANTS",
        "sex": "F",
        "age": 61,
        "site": "SITE-A",
        "manufacturer": "Acme DR",
        "views": ["PA"],
    }


def _burn_in_text(att: np.ndarray) -> np.ndarray:
    """Write a name-and-date label into the pixels, as a modality or a screenshot tool does."""
    import cv2

    mask = np.zeros(att.shape, dtype=np.uint8)
    scale = att.shape[0] / 256
    for line, text in enumerate(("DOE^JANE 1950-01-01", "PORTABLE  R")):
        origin = (int(8 * scale), int((20 + 18 * line) * scale))
        cv2.putText(mask, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, 255, max(1, int(scale)))
    return np.where(mask > 0, 1.0, att).astype(att.dtype)


def _for_processing(ds: Dataset) -> Dataset:
    """Raw detector data (PS3.3 C.8.11.1.1.1): the For Processing SOP class, no display transforms."""
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PROCESSING
    ds.PresentationIntentType = "FOR PROCESSING"
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _secondary_capture(ref: Dataset, att: np.ndarray, seed: int) -> Dataset:
    """A screenshot of the radiograph (8-bit, DERIVED\\SECONDARY), built by highdicom from the source."""
    from highdicom.sc import SCImage

    pixels = np.clip(np.rint(att * 255), 0, 255).astype(np.uint8)
    sc = SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=_uid(seed, "variant-series", "sc"),
        series_number=99,
        sop_instance_uid=_uid(seed, "variant-sop", "sc"),
        instance_number=1,
        manufacturer="Acme Workstation",
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.BurnedInAnnotation = "NO"
    sc.BodyPartExamined = "CHEST"  # unpaired, so General Series Laterality (type 2C) stays absent
    return sc


def generate_scope_variants(out_dir: str | Path, seed: int = 0, size: int = 256) -> dict[str, Path]:
    """Write the three real-world inputs that are not diagnostic "for presentation" originals, one file
    each (name = variant): a DX "FOR PROCESSING" image, a derived Secondary Capture (a screenshot), and a
    DX whose pixels carry burned-in text. Each is a valid object of its own IOD (dciodvfy: 0 errors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = SyntheticSpec(size=size, seed=seed)
    rng = np.random.default_rng([seed, 22])
    patient = _variant_patient(seed)
    att = _chest_phantom(rng, size, has_nodule=False, contrast=0.0)
    made: dict[str, Dataset] = {}
    base, _ = _to_dicom(att, rng, spec, patient, index=10**6, image_no=0, kind="DX")
    made["for_processing"] = _for_processing(base)
    ref, _ = _to_dicom(att, rng, spec, patient, index=10**6 + 2, image_no=0, kind="DX")
    made["derived_secondary_capture"] = _secondary_capture(ref, att, seed)
    burned, _ = _to_dicom(_burn_in_text(att), rng, spec, patient, index=10**6 + 4, image_no=0, kind="DX")
    burned.BurnedInAnnotation = "YES"
    made["burned_in_annotation"] = burned
    paths = {}
    for name, ds in made.items():
        paths[name] = out / f"{name}.dcm"
        with atomic_path(paths[name]) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    return paths
