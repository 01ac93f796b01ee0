"""``xraytriage score``: score a folder / path list / manifest of scans with a model bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xraytriage.commands._common import add_progress_flag
from xraytriage.commands.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, run_guarded
from xraytriage.utils.errors import UsageError

HELP = """\
Score every scan under INPUT with a model bundle and append one row per scan to --out.

INPUT is a folder (searched recursively; DICOM found by content whatever the extension, PNG/JPEG/TIFF
by signature; hidden and system files skipped), a text file with one path per line, or a manifest
(.csv/.tsv/.parquet with a 'path' column). The run is resumable: rerun the same command after an
interruption (even kill -9) and only the missing scans are scored. Files that cannot be scored are
listed in the errors file with a reason code; the run goes on. Files that are plainly not scans (text
such as a dataset's LICENSE or readme, CSV, JSON, XML, a DICOMDIR or another DICOM object without
pixel data) are listed there too, with reason not_a_scan, counted as skipped and not as failures;
--strict counts them as failures.

Hostile or broken files are contained: each scan has a decoding time limit (--file-timeout) and each
decoding process a memory cap (--worker-memory-mb); compressed pixel data whose own size differs from
the header's, or that the decoder reports as damaged, is refused with a reason code.

exit codes: 0 every scan scored (files that are not scans skipped); 1 some files could not be scored
(see the errors file); 2 usage or configuration error (missing bundle/input, output from another model
or in use by another run, bad config); 74 I/O error (disk full, permission denied: the message names the
path); 70 internal error (a bug; the message names the file holding the traceback).

Under torchrun each rank scores a shard and rank 0 merges: see docs/scoring.md."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="batch-score a folder of scans (resumable, error-tolerant)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", type=Path, help="folder, text file of paths, or manifest")
    parser.add_argument("--model", required=True, type=Path, metavar="BUNDLE", help="model bundle (model.pt)")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="SCORES",
        help="scores file; .csv (default) or .parquet. An existing file is resumed, never overwritten",
    )
    parser.add_argument(
        "--errors",
        type=Path,
        metavar="ERRORS.csv",
        help="failed files with reason code and message (default: SCORES_STEM.errors.csv beside --out)",
    )
    parser.add_argument("--batch-size", type=int, metavar="N", help="scans per forward pass (default 32)")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="decoding processes; 0 decodes in the main process (default 2)",
    )
    parser.add_argument(
        "--device", metavar="DEV", help="auto (default: cuda if available), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--amp",
        choices=["auto", "bf16", "fp16", "off"],
        help="GPU mixed precision (default auto: bf16 if supported)",
    )
    parser.add_argument("--threads", type=int, metavar="N", help="CPU inference threads (default: all cores)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model: compiles once at start (tens of seconds); for long GPU runs",
    )
    parser.add_argument(
        "--engine",
        choices=["auto", "torch", "onnxruntime"],
        help="what runs the network: auto (default) = ONNX Runtime on CPU (1.3-1.6x PyTorch there; logits "
        "checked against PyTorch at start), PyTorch on GPU or with --compile",
    )
    parser.add_argument(
        "--cam", type=Path, metavar="DIR", help="write Grad-CAM overlays (PNG) of flagged scans into DIR"
    )
    parser.add_argument(
        "--dicom-out",
        type=Path,
        metavar="DIR",
        help="also write, per scored DICOM scan, a DICOM Structured Report in the scan's own study (and with "
        "--cam each Grad-CAM overlay as a Secondary Capture in the same series) into DIR, for "
        "`xraytriage send`. These objects carry the scan's patient and study identity, as DICOM "
        "results must",
    )
    parser.add_argument(
        "--studies",
        type=Path,
        metavar="STUDIES.csv",
        help="also write one row per StudyInstanceUID: maximum probability over its images, flag per class",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="rescore the files listed in the errors file (by default a rerun skips them)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="count files that are plainly not scans (text, CSV, JSON, XML, DICOMDIR, DICOM without pixel "
        "data) as failures (exit 1) instead of skipping them",
    )
    parser.add_argument(
        "--file-timeout",
        type=float,
        metavar="S",
        help="seconds one scan may take to decode before it is recorded as 'timeout' (default 120; "
        "0 = none; needs --workers >= 1)",
    )
    parser.add_argument(
        "--worker-memory-mb",
        type=int,
        metavar="MB",
        help="memory a decoding process may allocate beyond what it starts with; past it the scan fails "
        "as 'too_large' (default 4096; 0 = no cap; Linux)",
    )
    parser.add_argument(
        "--corrupt-pixel-data",
        choices=["fail", "accept"],
        help="pixel data the decoder reports as damaged: fail = record 'corrupt_pixel_data' "
        "(default: the bundle's setting, fail unless trained otherwise), accept = score the picture",
    )
    add_watch_arguments(parser)
    parser.add_argument(
        "--out-of-scope",
        choices=["flag", "skip"],
        help="a scan outside the model's validated scope: flag = scored with every class flagged for a "
        "human read (default), skip = not scored, listed in the errors file as out_of_scope",
    )
    add_progress_flag(parser)
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML config; its 'score' section sets the defaults above, its 'scope' section narrows or "
        "widens the bundle's validated scope",
    )


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "watching an inbox",
        "--watch keeps scoring INPUT (a folder) as files arrive: a file is taken once its size and "
        "modification time are unchanged for --settle seconds (names ending .part/.partial/.tmp are "
        "never taken: routers that rename when done can use --settle 0); each file is scored exactly once "
        "across restarts (the journals); SIGTERM or Ctrl-C ends after the batch in flight. See "
        "docs/scoring.md.",
    )
    group.add_argument("--watch", action="store_true", help="keep watching INPUT for new files")
    group.add_argument("--poll", type=float, default=1.0, metavar="S", help="list the inbox every S s (1)")
    group.add_argument(
        "--settle", type=float, default=1.0, metavar="S", help="a file unchanged this long is complete (1)"
    )
    group.add_argument(
        "--idle-exit", type=float, metavar="S", help="end after S seconds without a new file (default: never)"
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument("--send-to", metavar="AET@HOST:PORT", help="C-STORE each batch's --dicom-out results")
    where.add_argument("--send-dicomweb", metavar="URL", help="STOW-RS each batch's --dicom-out results")
    group.add_argument("--calling-aet", default="XRAYTRIAGE", help="our AE title when sending")
    group.add_argument("--tls-ca", type=Path, metavar="PEM", help="when sending: CA bundle to trust")
    group.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="when sending: our certificate (mutual TLS)"
    )
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="when sending: the key of --tls-cert")


def _watch_sender(args: argparse.Namespace) -> object:
    from xraytriage.commands.send import make_sender

    to, web = args.send_to, args.send_dicomweb
    if not to and not web:
        return None
    names = ("calling_aet", "tls_ca", "tls_cert", "tls_key")
    fields = {name: getattr(args, name) for name in names}
    fields["calling_aet"] = fields["calling_aet"] or "XRAYTRIAGE"
    return make_sender(argparse.Namespace(to=to, dicomweb=web, tls=False, timeout=30.0, **fields))


def _run_watch(args: argparse.Namespace, opts: object) -> object:
    from xraytriage.scoring.watch import WatchOptions, watch

    if not Path(args.input).is_dir():
        raise UsageError(f"{args.input}: --watch needs a folder (the inbox a router writes into)")
    if (args.send_to or args.send_dicomweb) and not args.dicom_out:
        raise UsageError("--send-to / --send-dicomweb send the --dicom-out results: give --dicom-out DIR")
    sender = _watch_sender(args)  # a DestinationError is a UsageError (exit 2)
    return watch(opts, WatchOptions(args.poll, args.settle, args.idle_exit), sender)  # type: ignore[arg-type]


def _fail(message: str) -> int:
    return fail("xraytriage score", message, EXIT_USAGE)


def run(args: argparse.Namespace) -> int:
    """Returns 0 (all scored), 1 (some files failed) or 2 (usage/config error); the errors that carry
    their own code (utils/errors.py) and I/O and internal failures propagate to
    :func:`~xraytriage.commands.exit_codes.run_guarded` (2, 74, 70)."""
    from xraytriage.config import ScoreConfig, load_config
    from xraytriage.scoring import ScoreOptions, score
    from xraytriage.scoring.journal import JournalMismatch

    full = load_config(args.config) if args.config else None
    cfg = full.score if full is not None else ScoreConfig()

    def pick(name: str, default: object) -> object:
        value = getattr(args, name)
        return default if value is None else value

    batch_size = int(pick("batch_size", cfg.batch_size))
    workers = int(pick("workers", cfg.num_workers))
    if batch_size < 1:
        return _fail("--batch-size must be at least 1")
    if workers < 0:
        return _fail("--workers must be 0 or more")
    timeout = float(pick("file_timeout", cfg.file_timeout_s))
    memory_mb = int(pick("worker_memory_mb", cfg.worker_memory_mb))
    if timeout < 0 or memory_mb < 0:
        return _fail("--file-timeout and --worker-memory-mb must be 0 (off) or more")
    corrupt = pick("corrupt_pixel_data", cfg.corrupt_pixel_data)
    if not Path(args.input).exists():
        return _fail(f"{args.input}: input not found (give a folder, a text file of paths, or a manifest)")
    if not Path(args.model).is_file():
        return _fail(f"{args.model}: model bundle not found (train writes RUN_DIR/model.pt)")
    opts = ScoreOptions(
        model=Path(args.model),
        input=Path(args.input),
        out=Path(args.out),
        errors=args.errors,
        batch_size=batch_size,
        workers=workers,
        device=str(pick("device", cfg.device)),
        amp=str(pick("amp", cfg.amp)),
        compile=bool(args.compile or cfg.compile),
        engine=str(pick("engine", cfg.engine)),
        cam_dir=args.cam,
        dicom_out=args.dicom_out,
        studies=args.studies,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        strict=args.strict,
        threads=args.threads,
        file_timeout_s=timeout or None,
        worker_memory_mb=memory_mb,
        corrupt_pixel_data=None if corrupt == "bundle" else str(corrupt),
        out_of_scope=str(pick("out_of_scope", cfg.out_of_scope)),
        scope=full.scope if full is not None else None,
    )
    try:
        summary = _run_watch(args, opts) if args.watch else score(opts)
    except (JournalMismatch, ImportError) as exc:  # another model's outputs; a missing optional package
        return _fail(str(exc))
    except FileNotFoundError as exc:
        if exc.errno is not None:  # a file vanished under the run: an I/O error, not a usage error
            raise
        return _fail(str(exc))
    if summary.rank == 0:
        print(summary.text(), file=sys.stderr)
    return EXIT_FAILED if (summary.failed or summary.errors_total) else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m xraytriage.commands.score``), used by torchrun and the tests."""
    import logging

    parser = argparse.ArgumentParser(
        prog="xraytriage score", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    return run_guarded("xraytriage score", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
