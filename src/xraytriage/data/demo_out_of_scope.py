"""Out-of-scope scans for the demo's ``incoming/`` folder: what a hospital folder also holds.

Every file is real material that ships with a core dependency, or a held-out demo scan whose header
says what a hospital's header would say; nothing is downloaded and nothing is copied into this
package:

* ``ct_slice.dcm``: pydicom's ``CT_small.dcm`` (a real CT slice; pydicom's test files, MIT);
* ``mr_slice.dcm``: pydicom's ``MR_small.dcm`` (a real MR slice);
* ``photograph.jpg``: matplotlib's ``grace_hopper.jpg`` sample picture (a photograph of Grace Hopper,
  a U.S. Navy portrait in the public domain);
* ``lateral.dcm`` / ``paediatric.dcm``: a held-out demo scan whose ViewPosition is ``LL`` / whose
  PatientAge is ``007Y`` (the pixels stay frontal: the header rules catch these);
* ``extremity_cr.dcm``: pydicom-data's ``RG3_UNCR.dcm`` (a real CR radiograph of an extremity, AP)
  when the ``pydicom-data`` package is installed (the dev extra); left out otherwise.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlantedScan:
    name: str
    what: str
    caught_by: str  # the scope rule expected to name it ("ood_score": the image check alone)


def _pydicom_file(name: str) -> Path | None:
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name, download=False)
    except Exception:  # pydicom's data manager can raise on odd installs; the file is then skipped
        return None
    return Path(path) if path else None


def _photograph() -> Path | None:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return path if path.is_file() else None


def _relabelled(template: Path, dest: Path, **tags: str) -> None:
    import pydicom

    ds = pydicom.dcmread(template)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(dest.name), str(ds.SOPInstanceUID)])
    ds.save_as(dest)


def write_out_of_scope(incoming: Path, template: Path) -> list[PlantedScan]:
    """Put the out-of-scope files into ``incoming``; ``template`` is a held-out demo DICOM."""
    planted = [
        PlantedScan("lateral.dcm", "held-out scan, header ViewPosition LL", "view"),
        PlantedScan("paediatric.dcm", "held-out scan, header PatientAge 007Y", "age"),
    ]
    _relabelled(template, incoming / "lateral.dcm", ViewPosition="LL")
    _relabelled(template, incoming / "paediatric.dcm", PatientAge="007Y")
    copies = [
        ("ct_slice.dcm", _pydicom_file("CT_small.dcm"), "pydicom's CT_small.dcm, a CT slice", "modality"),
        ("mr_slice.dcm", _pydicom_file("MR_small.dcm"), "pydicom's MR_small.dcm, an MR slice", "modality"),
        ("photograph.jpg", _photograph(), "matplotlib's grace_hopper.jpg, a photograph", "ood_score"),
        (
            "extremity_cr.dcm",
            _pydicom_file("RG3_UNCR.dcm"),
            "pydicom-data's RG3, an extremity CR",
            "body_part",
        ),
    ]
    for name, source, what, rule in copies:
        if source is None:
            log.info("%s left out: its source file is not installed", name)
            continue
        shutil.copyfile(source, incoming / name)
        planted.append(PlantedScan(name, what, rule))
    return planted
