"""``xraytriage send``: push DICOM results (score --dicom-out) to a PACS by C-STORE or STOW-RS."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from xraytriage.commands.exit_codes import EXIT_FAILED, EXIT_OK, fail

if TYPE_CHECKING:
    from xraytriage.pacs.send import Sender, SendReport

HELP = """\
Send every DICOM object (*.dcm) under DIR to a PACS, one report line per object.

  --to AET@HOST:PORT   DIMSE C-STORE (pynetdicom); --tls (with --tls-ca / --tls-cert / --tls-key) for
                       DICOM over TLS
  --dicomweb URL       DICOMweb STOW-RS (dicomweb-client), e.g. http://pacs:8042/dicom-web; HTTPS
                       trusts --tls-ca and presents --tls-cert / --tls-key when given

Transient failures (connection refused or dropped, PACS out of resources, HTTP 408/429/5xx) are retried
with exponential backoff (--attempts, default 4); refusals are not. Sending twice is harmless: a PACS
files an object by its SOP Instance UID, and the results' UIDs are the same on every scoring run.

exit codes: 0 every object stored; 1 some objects failed (see the report); 2 usage error."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "send",
        help="send DICOM results to a PACS (C-STORE or STOW-RS)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def add_destination_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--to / --dicomweb and TLS options (shared with score --watch --send-to)."""
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--to", metavar="AET@HOST:PORT", help="C-STORE destination")
    where.add_argument("--dicomweb", metavar="URL", help="DICOMweb base URL for STOW-RS")
    parser.add_argument("--calling-aet", default="XRAYTRIAGE", help="our AE title (default XRAYTRIAGE)")
    parser.add_argument("--tls", action="store_true", help="C-STORE over TLS (implied by any --tls-* option)")
    parser.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA bundle to trust (default: system CAs)")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="our certificate, for mutual TLS")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="the key of --tls-cert")
    parser.add_argument("--attempts", type=int, default=4, metavar="N", help="tries per object (default 4)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="network timeout (default 30)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder", metavar="DIR", type=Path, help="folder of DICOM objects (score --dicom-out)"
    )
    add_destination_arguments(parser)
    parser.add_argument(
        "--report", type=Path, metavar="CSV", help="per-object report (default: DIR/send_report.csv)"
    )


def make_sender(args: argparse.Namespace) -> Sender:
    """The sender the arguments ask for; DestinationError / FileNotFoundError on bad ones."""
    from xraytriage.pacs.send import CStoreSender, DicomNode, StowSender, TlsOptions

    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        for name in ("tls_ca", "tls_cert", "tls_key"):
            value = getattr(args, name)
            if value is not None and not Path(value).is_file():
                raise FileNotFoundError(f"--{name.replace('_', '-')} {value}: file not found")
        if args.tls_key and not args.tls_cert:
            raise FileNotFoundError("--tls-key given without --tls-cert: give both for mutual TLS")
        tls = TlsOptions(args.tls_ca, args.tls_cert, args.tls_key)
    if args.to:
        return CStoreSender(DicomNode.parse(args.to), args.calling_aet, tls, args.timeout)
    return StowSender(args.dicomweb, tls, args.timeout)


def write_report(report_path: Path, report: SendReport) -> None:
    import csv

    from xraytriage.utils.atomic import atomic_write

    def emit(fh: IO[Any]) -> None:
        writer = csv.writer(fh)
        writer.writerow(["path", "sop_instance_uid", "destination", "status", "attempts", "detail"])
        for r in report.results:
            writer.writerow([r.path, r.sop_instance_uid, report.destination, r.status, r.attempts, r.detail])

    atomic_write(report_path, emit)


def run(args: argparse.Namespace) -> int:
    from xraytriage.pacs.send import RetryPolicy, iter_objects, send_paths
    from xraytriage.utils.lock import exclusive_lock, lock_file_for

    folder: Path = args.folder
    if not folder.is_dir():
        return fail("xraytriage send", f"{folder}: not a folder (give the --dicom-out folder of score)")
    if args.attempts < 1:
        return fail("xraytriage send", "--attempts must be at least 1")
    try:
        sender = make_sender(args)  # a DestinationError is a UsageError (exit 2)
    except FileNotFoundError as exc:
        return fail("xraytriage send", str(exc))
    report_path = args.report or folder / "send_report.csv"
    paths = list(iter_objects(folder))
    with exclusive_lock(lock_file_for(report_path), str(report_path)):
        report = send_paths(sender, paths, RetryPolicy(attempts=args.attempts))
        write_report(report_path, report)
    print(f"{report.text()}; report: {report_path}", file=sys.stderr)
    return EXIT_OK if report.failed == 0 else EXIT_FAILED


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="xraytriage send")
    add_arguments(parser)
    return run(parser.parse_args(argv))
