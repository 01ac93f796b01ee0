"""DICOM results (``score --dicom-out DIR``): one Structured Report per scored DICOM scan, filed in the
scan's own study, plus (with ``--cam``) each Grad-CAM overlay as a Secondary Capture in the same series.

Built with highdicom, the library made for AI results in DICOM, so patient/study identity, evidence and
content-item encoding follow the standard rather than hand-set attributes.

SR structure: a Comprehensive SR document, not TID 1500. TID 1500 (Measurement Report) is made for
measurements of image regions with tracking identifiers; an image-level triage result also needs free
text the template has no slot for (the operating point's guarantee, the out-of-scope reason, the use
statement). The tree, each item coded (DCM/SCT/LN codes; ``99XRT`` local codes where none exists)::

    CONTAINER  (LN 18748-4) Diagnostic Imaging Report
      IMAGE    (DCM 121324) Source image            -> the scored SOP instance
      TEXT     (DCM 111001) Algorithm Name          model architecture
      TEXT     (DCM 111003) Algorithm Version       xraytriage version
      TEXT     (99XRT MODELID) Model identifier     bundle hash (model_id)
      TEXT     (99XRT SCOPE) Out-of-scope reason    only when the scan is out of scope
      TEXT     (99XRT USE) Use statement            "not for diagnostic use unless validated locally"
      CONTAINER (DCM 121071) Finding                one per class
        TEXT   (99XRT CLASS) Class                  label
        NUM    (DCM 122157) Probability             calibrated probability, unit {probability}
        NUM    (99XRT THRESH) Threshold             the operating point
        CODE   (99XRT FLAG) Flagged                 SCT Yes / No
        TEXT   (99XRT OPPOINT) Operating point      how it was chosen and what it guarantees

The objects carry the source's patient and study identity (that is how a PACS files them with the
study): they are the only output allowed to, are written only on request and never logged. SOP
Instance UIDs are derived from the source SOP Instance UID and the model, so a resumed or repeated run
rewrites the same objects under the same names instead of adding duplicates.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from xraytriage import __version__
from xraytriage.columns import flag_column, prob_column
from xraytriage.utils.atomic import atomic_path

log = logging.getLogger(__name__)

USE_STATEMENT = "Not for diagnostic use unless validated locally (research triage output of xraytriage)."
SERIES_NUMBER = 9022
SERIES_DESCRIPTION = "xraytriage AI triage results"
LOCAL_SCHEME = "99XRT"
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/xraytriage/dicom-results")


@dataclass(frozen=True)
class WrittenObjects:
    """What one scan produced: the SR and any Grad-CAM Secondary Captures (paths under DIR)."""

    sr: Path
    captures: list[Path]


def derived_uid(*parts: str) -> str:
    """A UUID-derived UID (``2.25.<UUID as integer>``, PS3.5 B.2) from a name-based (SHA-1, RFC 4122
    version 5) UUID of ``parts``: the same parts give the same UID on every run and machine.
    (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy and is random.)"""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


def result_uids(source_sop_uid: str, study_uid: str, model_id: str) -> tuple[str, str]:
    """(series UID, SR SOP Instance UID): the same for the same source and model, on every run."""
    return derived_uid("series", study_uid, model_id), derived_uid("sr", source_sop_uid, model_id)


def capture_uid(source_sop_uid: str, model_id: str, label: str) -> str:
    return derived_uid("cam", source_sop_uid, model_id, label)


def _codes() -> dict[str, Any]:
    from highdicom.sr import CodedConcept

    def local(value: str, meaning: str) -> Any:
        return CodedConcept(value, LOCAL_SCHEME, meaning)

    return {
        "title": CodedConcept("18748-4", "LN", "Diagnostic Imaging Report"),
        "source": CodedConcept("121324", "DCM", "Source image"),
        "algorithm": CodedConcept("111001", "DCM", "Algorithm Name"),
        "version": CodedConcept("111003", "DCM", "Algorithm Version"),
        "finding": CodedConcept("121071", "DCM", "Finding"),
        "probability": CodedConcept("122157", "DCM", "Probability"),
        "unit": CodedConcept("{probability}", "UCUM", "probability"),
        "yes": CodedConcept("373066001", "SCT", "Yes"),
        "no": CodedConcept("373067005", "SCT", "No"),
        "model_id": local("MODELID", "Model identifier"),
        "scope": local("SCOPE", "Out-of-scope reason"),
        "use": local("USE", "Use statement"),
        "class": local("CLASS", "Class"),
        "threshold": local("THRESH", "Operating point threshold"),
        "flag": local("FLAG", "Flagged at operating point"),
        "operating_point": local("OPPOINT", "Operating point"),
    }


def describe_operating_point(label: str, threshold: float, stored: Mapping[str, Any] | None) -> str:
    """The bundle's record of how the threshold was chosen (and what it guarantees), in one line."""
    if not stored:
        return f"threshold {threshold:.4g} (given; no record of how it was chosen)"
    from xraytriage.evaluation.thresholds import OperatingPoint

    return OperatingPoint.from_json(dict(stored)).describe()


class DicomResultWriter:
    """Writes the DICOM results of one scan at a time into ``out_dir`` (one flat folder)."""

    def __init__(
        self,
        out_dir: Path,
        labels: Sequence[str],
        thresholds: Mapping[str, float],
        operating_points: Mapping[str, Mapping[str, Any]],
        model_id: str,
        model_name: str,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.labels = list(labels)
        self.thresholds = dict(thresholds)
        self.model_id = model_id
        self.model_name = model_name
        self.op_text = {
            label: describe_operating_point(label, self.thresholds[label], operating_points.get(label))
            for label in self.labels
        }
        self.codes = _codes()
        self.written = 0
        self.staged: StagedFiles | None = None  # set by the sink for a batch
        if not log.isEnabledFor(logging.DEBUG):  # one INFO line per copied module per object otherwise
            logging.getLogger("highdicom").setLevel(logging.WARNING)

    # ------------------------------------------------------------------ SR
    def _finding(self, label: str, probability: float, flagged: bool) -> Any:
        import highdicom.sr as sr

        c = self.codes
        box = sr.ContainerContentItem(c["finding"], relationship_type="CONTAINS")
        box.ContentSequence = [
            sr.TextContentItem(c["class"], label, relationship_type="CONTAINS"),
            sr.NumContentItem(c["probability"], float(probability), c["unit"], relationship_type="CONTAINS"),
            sr.NumContentItem(
                c["threshold"], self.thresholds[label], c["unit"], relationship_type="CONTAINS"
            ),
            sr.CodeContentItem(c["flag"], c["yes"] if flagged else c["no"], relationship_type="CONTAINS"),
            sr.TextContentItem(
                c["operating_point"], self.op_text[label][:1024], relationship_type="CONTAINS"
            ),
        ]
        return box

    def _content(self, source: Dataset, probs: Sequence[float], flags: Sequence[bool], scope: str) -> Any:
        import highdicom.sr as sr

        c = self.codes
        root = sr.ContainerContentItem(c["title"])
        items = [
            sr.ImageContentItem(
                c["source"], source.SOPClassUID, source.SOPInstanceUID, relationship_type="CONTAINS"
            ),
            sr.TextContentItem(c["algorithm"], self.model_name, relationship_type="CONTAINS"),
            sr.TextContentItem(c["version"], __version__, relationship_type="CONTAINS"),
            sr.TextContentItem(c["model_id"], self.model_id, relationship_type="CONTAINS"),
        ]
        if scope:
            items.append(sr.TextContentItem(c["scope"], scope[:1024], relationship_type="CONTAINS"))
        items.append(sr.TextContentItem(c["use"], USE_STATEMENT, relationship_type="CONTAINS"))
        items += [self._finding(lb, p, f) for lb, p, f in zip(self.labels, probs, flags)]
        root.ContentSequence = items
        return root

    def _report(
        self,
        source: Dataset,
        probs: Sequence[float],
        flags: Sequence[bool],
        scope: str,
        uids: tuple[str, str],
    ) -> Dataset:
        import highdicom.sr as sr

        report = sr.ComprehensiveSR(
            evidence=[source],
            content=self._content(source, probs, flags, scope),
            series_instance_uid=uids[0],
            series_number=SERIES_NUMBER,
            sop_instance_uid=uids[1],
            instance_number=1,
            manufacturer="xraytriage",
            is_complete=True,
        )
        report.SeriesDescription = SERIES_DESCRIPTION
        scheme = Dataset()  # declares the local coding scheme (PS3.3 C.12.1.1.4)
        scheme.CodingSchemeDesignator = LOCAL_SCHEME
        scheme.CodingSchemeName = "xraytriage local codes"
        scheme.CodingSchemeResponsibleOrganization = "xraytriage"
        report.CodingSchemeIdentificationSequence = [scheme]
        return report

    # ------------------------------------------------------------------ Grad-CAM
    def _capture(self, source: Dataset, rgb: np.ndarray, label: str, series_uid: str, number: int) -> Dataset:
        from highdicom.sc import SCImage

        sc = SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8),
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBER,
            sop_instance_uid=capture_uid(str(source.SOPInstanceUID), self.model_id, label),
            instance_number=number,
            manufacturer="xraytriage",
            patient_orientation=("L", "F"),
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        )
        sc.SeriesDescription = SERIES_DESCRIPTION
        sc.ImageComments = f"Grad-CAM of class {label}; {USE_STATEMENT}"
        sc.BurnedInAnnotation = "NO"
        sc.BodyPartExamined = "CHEST"  # unpaired: General Series Laterality stays absent
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
        sc.SourceImageSequence = [ref]
        return sc

    # ------------------------------------------------------------------ one scan
    def write(
        self, row: Mapping[str, object], overlays: Mapping[str, np.ndarray] | None = None
    ) -> WrittenObjects | None:
        """Write the results of one scored row (a scores.csv row as a mapping, so new columns such as
        ``scope_reasons`` are picked up by name); ``overlays`` maps class -> RGB Grad-CAM image.
        Returns None for a scan that is not DICOM (nothing to file a result with)."""
        sop_uid = str(row.get("sop_instance_uid") or "")
        if not sop_uid:
            return None
        source = pydicom.dcmread(str(row["path"]), stop_before_pixels=True)
        probs = [float(row[prob_column(label)]) for label in self.labels]  # type: ignore[arg-type]
        flags = [str(row[flag_column(label)]) in {"1", "True", "true"} for label in self.labels]
        uids = result_uids(sop_uid, str(source.StudyInstanceUID), self.model_id)
        report = self._report(source, probs, flags, str(row.get("scope_reasons") or ""), uids)
        written = WrittenObjects(self._save(report, "SR"), [])
        for number, (label, rgb) in enumerate(sorted((overlays or {}).items()), start=2):
            written.captures.append(self._save(self._capture(source, rgb, label, uids[0], number), "SC"))
        self.written += 1 + len(written.captures)
        return written

    def _save(self, ds: Dataset, kind: str) -> Path:
        """Named by the object's own UID: rewriting it after a resume replaces, never duplicates.
        While staging (see :class:`StagedFiles`) the file is written beside its name and renamed later."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        target = self.out_dir / f"{kind}_{ds.SOPInstanceUID}.dcm"
        if self.staged is not None:
            ds.save_as(self.staged.temporary(target), enforce_file_format=True)
            return target
        with atomic_path(target) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        return target


class StagedFiles:
    """A batch's files written under temporary names, then made durable together: their fsyncs run in
    parallel threads (fsync releases the GIL, and the file system commits them together), then each
    is renamed onto its name. The same guarantee as one atomic write each, at a fraction of the cost."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []

    def temporary(self, target: Path) -> Path:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        self.pending.append((Path(tmp), target))
        return Path(tmp)

    def commit(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if not self.pending:
            return
        with ThreadPoolExecutor(max_workers=min(8, len(self.pending))) as pool:
            list(pool.map(_fsync, [tmp for tmp, _ in self.pending]))
        for tmp, target in self.pending:
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, target)
        self.pending.clear()

    def discard(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending.clear()


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


class DicomResultSink:
    """The scoring run's hook: called with each batch's rows just before they are journaled, so a kill
    in between rewrites the same objects on resume (never a scan journaled without its results)."""

    def __init__(self, writer: DicomResultWriter, columns: Sequence[str]) -> None:
        self.writer = writer
        self.columns = list(columns)
        self.failed = 0

    def record(
        self, rows: Sequence[Sequence[object]], overlays: Mapping[tuple[str, str], np.ndarray]
    ) -> None:
        """``overlays`` maps (scan path, class) -> RGB Grad-CAM (scans skipped as out of scope have none)."""
        from pydicom.errors import InvalidDicomError

        self.writer.staged = staged = StagedFiles()
        try:
            for values in rows:
                row = dict(zip(self.columns, values))
                mine = {label: rgb for (path, label), rgb in overlays.items() if path == row["path"]}
                try:
                    self.writer.write(row, mine)
                except (InvalidDicomError, ValueError, AttributeError, KeyError) as exc:
                    self.failed += 1  # the message names the file, never its patient
                    log.warning("no DICOM result for %s: %s", row.get("path"), type(exc).__name__)
            staged.commit()  # every object of the batch on disk before its rows are journaled
        finally:
            staged.discard()
            self.writer.staged = None

    @property
    def written(self) -> int:
        return self.writer.written
