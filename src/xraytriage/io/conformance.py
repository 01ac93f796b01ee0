"""DICOM conformance check with dicom3tools' ``dciodvfy``, the validator that reads the standard's own
module tables: the one referee for "this object is valid DICOM" (used by the tests and the benchmark)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Conformance:
    """What ``dciodvfy`` said about one file: the IOD it recognised, its errors and warnings."""

    path: Path
    iod: str
    errors: list[str]
    warnings: list[str]


def dciodvfy_available() -> bool:
    return shutil.which("dciodvfy") is not None


def check_file(path: str | Path) -> Conformance:
    """Run ``dciodvfy`` on ``path`` (it reports on stderr; the first line names the IOD)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise FileNotFoundError("dciodvfy not found: install dicom3tools (apt-get install dicom3tools)")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, errors="replace", timeout=120)
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    iod = next((line for line in lines if not line.startswith(("Error", "Warning"))), "")
    return Conformance(Path(path), iod, errors, warnings)
