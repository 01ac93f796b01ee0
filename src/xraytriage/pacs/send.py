"""Send DICOM objects to a PACS: DIMSE C-STORE (pynetdicom) or DICOMweb STOW-RS (dicomweb-client).

Both well-kept libraries speak the protocols; this module adds what a hospital's scheduler needs:
transient failures (connection refused or dropped, a PACS out of resources, HTTP 5xx/408/429) are
retried with exponential backoff, permanent ones (the PACS refuses the SOP class or the data set) are
not, and every object gets a line in the report: stored, or failed and why.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from xraytriage.utils.errors import UsageError

log = logging.getLogger(__name__)

STORED, FAILED = "stored", "failed"


class DestinationError(UsageError):
    """A destination that cannot be parsed (usage error)."""


@dataclass(frozen=True)
class DicomNode:
    """``AET@HOST:PORT``: the called AE title and its network address."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DicomNode:
        aet, at, address = text.rpartition("@")
        host, colon, port = address.rpartition(":")
        if not at or not colon or not aet or not host or not port.isdigit():
            raise DestinationError(f"--to {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@pacs.example:4242")
        if len(aet) > 16 or not aet.isascii() or "\\" in aet:
            raise DestinationError(
                f"--to {text!r}: an AE title has at most 16 ASCII characters, no backslash"
            )
        if not 0 < int(port) < 65536:
            raise DestinationError(f"--to {text!r}: port {port} is not in 1-65535")
        return cls(aet, host.strip("[]"), int(port))


@dataclass(frozen=True)
class TlsOptions:
    """TLS for C-STORE (DICOM PS3.15 B.1 secure transport) or HTTPS: CA bundle to trust, and for mutual
    TLS our certificate and key."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@dataclass
class ObjectResult:
    """One object's fate: where it went, stored or failed, after how many attempts, and why."""

    path: str
    sop_instance_uid: str
    status: str
    attempts: int
    detail: str = ""


@dataclass
class SendReport:
    destination: str
    results: list[ObjectResult] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return sum(r.status == STORED for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.status == FAILED for r in self.results)

    def text(self) -> str:
        return f"sent to {self.destination}: {self.stored} stored, {self.failed} failed"


class TransientError(Exception):
    """Worth another try: the network or the PACS may recover."""


class PermanentError(Exception):
    """The PACS refused this object; the same request will be refused again."""


class Sender(Protocol):
    description: str

    def store(self, ds: Dataset) -> str:
        """Store one object; returns a detail (e.g. a warning status) or raises Transient/PermanentError."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------- DIMSE C-STORE
# PS3.4 B.2.3 / PS3.7 C: C-STORE status codes
_WARNINGS = {0xB000: "coercion of data elements", 0xB006: "elements discarded", 0xB007: "data set mismatch"}


def c_store_outcome(status: int) -> str:
    """Map a C-STORE status to a detail (stored), or raise Transient/PermanentError."""
    if status == 0x0000:
        return ""
    if status in _WARNINGS:
        return f"stored with warning 0x{status:04X} ({_WARNINGS[status]})"
    if 0xA700 <= status <= 0xA7FF:
        raise TransientError(f"PACS out of resources (status 0x{status:04X})")
    if 0xA900 <= status <= 0xA9FF:
        raise PermanentError(f"data set does not match the SOP class (status 0x{status:04X})")
    if 0xC000 <= status <= 0xCFFF:
        raise PermanentError(f"PACS cannot understand the object (status 0x{status:04X})")
    if status == 0x0122:
        raise PermanentError("PACS does not support this SOP class (status 0x0122)")
    if status == 0x0124:
        raise PermanentError("not authorised (status 0x0124)")
    raise PermanentError(f"PACS refused the object (status 0x{status:04X})")


class CStoreSender:
    """C-STORE over one association, opened on demand and reopened after a failure."""

    def __init__(
        self,
        node: DicomNode,
        calling_aet: str = "XRAYTRIAGE",
        tls: TlsOptions | None = None,
        timeout_s: float = 30,
    ) -> None:
        self.node, self.calling_aet, self.tls, self.timeout_s = node, calling_aet, tls, timeout_s
        self.description = f"{node.ae_title}@{node.host}:{node.port}" + (" (TLS)" if tls else "")
        self.assoc = None
        self.contexts: set[str] = set()
        self.refused: str | None = None  # a permanent association rejection, once seen
        if not log.isEnabledFor(logging.DEBUG):  # its errors are ours to report, once, per object
            logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

    def _associate(self, sop_classes: Iterable[str]) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        self.contexts = set(sop_classes)
        for sop_class in sorted(self.contexts):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        tls_args = (self.tls.context(), self.node.host) if self.tls else None
        assoc = ae.associate(self.node.host, self.node.port, ae_title=self.node.ae_title, tls_args=tls_args)
        if assoc.is_rejected:
            # A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 = rejected-permanent (e.g. unknown called AE title)
            primitive = assoc.acceptor.primitive
            result, diagnostic = getattr(primitive, "result", None), getattr(primitive, "diagnostic", None)
            text = f"association rejected by {self.description} (result {result}, diagnostic {diagnostic})"
            if result == 1:  # the same request would be refused again: fail the rest without asking
                self.refused = text + ": check the AE titles"
                raise PermanentError(self.refused)
            raise TransientError(text)
        if not assoc.is_established:
            raise TransientError(f"could not connect to {self.description} (refused, dropped or timed out)")
        self.assoc = assoc

    def store(self, ds: Dataset) -> str:
        if self.refused is not None:
            raise PermanentError(self.refused)
        sop_class = str(ds.SOPClassUID)
        if self.assoc is None or not self.assoc.is_established or sop_class not in self.contexts:
            self.close()
            self._associate(self.contexts | {sop_class})
        status = self.assoc.send_c_store(ds)
        if "Status" not in status:  # no response: timeout, abort, dropped connection
            self.close()
            raise TransientError("no C-STORE response (connection lost or timed out)")
        return c_store_outcome(int(status.Status))

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None


# ---------------------------------------------------------------------------- DICOMweb STOW-RS
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class StowSender:
    """STOW-RS (PS3.18 10.5) one object per request, so the report is per object."""

    def __init__(self, url: str, tls: TlsOptions | None = None, timeout_s: float = 30) -> None:
        from dicomweb_client.api import DICOMwebClient
        from dicomweb_client.session_utils import add_certs_to_session, create_session

        session = create_session()
        if tls is not None:
            session = add_certs_to_session(session, str(tls.ca_file) if tls.ca_file else None)
            if tls.cert_file is not None:
                session.cert = (str(tls.cert_file), str(tls.key_file)) if tls.key_file else str(tls.cert_file)
        self.client = DICOMwebClient(url=url, session=session, timeout=timeout_s)
        self.client.set_http_retry_params(retry=False)  # retried here, uniformly with C-STORE
        self.description = url

    def store(self, ds: Dataset) -> str:
        import requests

        try:
            response = self.client.store_instances(datasets=[ds])
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in _TRANSIENT_HTTP:
                raise TransientError(f"HTTP {code} from {self.description}") from exc
            raise PermanentError(f"HTTP {code} from {self.description}") from exc
        except requests.RequestException as exc:
            raise TransientError(f"{type(exc).__name__} talking to {self.description}") from exc
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "")
            raise PermanentError(f"STOW-RS refused the object (failure reason {reason})")
        return ""

    def close(self) -> None:
        self.client._session.close()


# ---------------------------------------------------------------------------- the loop
def iter_objects(folder: Path) -> Iterator[Path]:
    """The DICOM objects under ``folder`` in a stable order (hidden files such as locks skipped)."""
    for path in sorted(folder.rglob("*.dcm")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            yield path


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # in all, the first included
    first_wait_s: float = 0.5  # doubled after each failure
    sleep: Callable[[float], None] = time.sleep


def send_one(sender: Sender, path: Path, policy: RetryPolicy) -> ObjectResult:
    """Read and store one object; retry transient failures with exponential backoff."""
    try:
        ds = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        return ObjectResult(str(path), "", FAILED, 0, f"cannot read the file: {type(exc).__name__}")
    uid = str(ds.get("SOPInstanceUID", ""))
    wait, detail = policy.first_wait_s, ""
    for attempt in range(1, policy.attempts + 1):
        try:
            return ObjectResult(str(path), uid, STORED, attempt, sender.store(ds))
        except PermanentError as exc:
            return ObjectResult(str(path), uid, FAILED, attempt, str(exc))
        except TransientError as exc:
            detail = str(exc)
            if attempt < policy.attempts:
                log.info("transient failure (%s); retrying in %.1f s", detail, wait)
                policy.sleep(wait)
                wait *= 2
    return ObjectResult(
        str(path), uid, FAILED, policy.attempts, f"gave up after {policy.attempts} attempts: {detail}"
    )


def send_paths(
    sender: Sender,
    paths: Sequence[Path],
    policy: RetryPolicy | None = None,
    on_result: Callable | None = None,
) -> SendReport:
    """Send every path; one result per object, in order."""
    policy = policy or RetryPolicy()
    report = SendReport(sender.description)
    try:
        for path in paths:
            result = send_one(sender, path, policy)
            report.results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        sender.close()
    return report
