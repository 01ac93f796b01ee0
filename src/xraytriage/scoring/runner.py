"""Batch scoring of a folder / path list / manifest: streamed, resumable, error-tolerant.

Flow (per rank under torchrun): stream candidate paths -> skip those already in the outputs -> keep
this rank's shard -> DataLoader workers decode + preprocess (bundle's PreprocessConfig, via
``image_to_tensor``) -> batched inference (AMP + channels_last on GPU; ONNX Runtime on CPU, see
``scoring.engine``) -> one durable append per batch to the scores and errors journals. Rank 0 merges
the part files after all ranks finish.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xraytriage.config import ScopeConfig
from xraytriage.data.dataset import ScanBatch, ScanFailure, collate_scans
from xraytriage.data.workers import WorkerInit
from xraytriage.inference import BatchLogits, iter_logits
from xraytriage.scope import ScanFacts, ScopeChecker, ScopeVerdict, ValidatedScope
from xraytriage.scoring import distributed as dist_utils
from xraytriage.scoring.crashes import REASONS as CRASH_REASONS
from xraytriage.scoring.crashes import death_reason, read_death_note, sigchld_deferred, worker_died
from xraytriage.scoring.dataset import PathStream, StreamedScans
from xraytriage.scoring.discovery import NOT_A_SCAN, iter_inputs, shard_of
from xraytriage.scoring.engine import Runner, check_engine, prepare_model, select_runner
from xraytriage.scoring.journal import CsvJournal
from xraytriage.scoring.outputs import (
    ERROR_COLUMNS,
    OUT_OF_SCOPE,
    aggregate_studies,
    display_path,
    error_reason_counts,
    finalize_parquet,
    is_parquet,
    journal_for,
    parquet_done,
    read_scores,
    score_columns,
)
from xraytriage.utils.lock import OutputLocked, exclusive_lock, lock_file_for

log = logging.getLogger(__name__)


@dataclass
class ScoreOptions:
    model: Path
    input: Path
    out: Path
    errors: Path | None = None
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    amp: str = "auto"
    compile: bool = False
    engine: str = "auto"  # see xraytriage.scoring.engine
    cam_dir: Path | None = None
    studies: Path | None = None
    retry_failed: bool = False
    progress: bool = True
    strict: bool = False  # files plainly not scans (text, DICOMDIR, ...) count as failures
    prefetch_factor: int = 4
    threads: int | None = None  # torch CPU threads; None = torch's default (all cores)
    file_timeout_s: float | None = 120.0  # per scan, in a worker; None = no limit
    worker_memory_mb: int = 4096  # per worker, beyond what it inherits; 0 = no cap
    corrupt_pixel_data: str | None = None  # "fail" | "accept"; None = the bundle's preprocessing
    dicom_out: Path | None = None  # DICOM SR (+ Grad-CAM Secondary Captures with cam_dir) per scan
    out_of_scope: str = "flag"  # "flag": scored, every flag raised; "skip": errors file, not scored
    scope: ScopeConfig | None = None  # scope.* keys narrowing/widening the bundle's validated scope


@dataclass
class ScoreSummary:
    scored: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # plainly not scans, this run
    flagged: dict[str, int] = field(default_factory=dict)
    already_done: int = 0
    errors_total: int = 0  # failures in the errors file (with --strict, skipped non-scans too)
    skipped_total: int = 0  # rows of skipped non-scans in the errors file
    out_of_scope: int = 0  # scans outside the validated scope, this run (flagged or skipped)
    out_of_scope_total: int = 0  # rows of skipped out-of-scope scans in the errors file
    out_of_scope_policy: str = "flag"
    scope_note: str = ""  # what the scope check could not do (no image reference, switched off)
    merged_rows: int = 0
    studies: int | None = None
    cams: int = 0
    dicom_objects: int = 0
    dicom_failed: int = 0
    elapsed_s: float = 0.0
    rank: int = 0
    world_size: int = 1
    engine: str = ""

    @property
    def rate(self) -> float:
        done = self.scored + self.failed + self.skipped
        if self.out_of_scope_policy == "skip":
            done += self.out_of_scope
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def scope_line(self) -> str:
        if self.out_of_scope_policy == "skip":
            what = (
                f"not scored; {self.out_of_scope_total} in the errors file as {OUT_OF_SCOPE}, "
                "not counted as failures"
            )
        else:
            what = "scored, every class flagged for a human read; not in the per-class flag counts"
        line = f"out of the validated scope: {self.out_of_scope} scans ({what})"
        return line + (f"; {self.scope_note}" if self.scope_note else "")

    def text(self) -> str:
        flagged = ", ".join(f"{k}={v}" for k, v in self.flagged.items()) or "-"
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.failed_by_reason.items()))
        lines = [
            f"scored {self.scored} scans, failed {self.failed}" + (f" ({reasons})" if reasons else ""),
            f"flagged per class: {flagged}",
            self.scope_line(),
            f"skipped (already in the outputs): {self.already_done}",
            f"failures in the errors file: {self.errors_total}",
            f"elapsed {self.elapsed_s:.1f} s, {self.rate:.1f} scans/s"
            + (f" (engine: {self.engine})" if self.engine else ""),
        ]
        if self.skipped or self.skipped_total:
            lines.insert(
                1,
                f"skipped {self.skipped} files that are not scans (text, CSV, JSON, XML, DICOM without "
                f"pixel data; {self.skipped_total} in the errors file as {NOT_A_SCAN}, not counted as "
                "failures; --strict counts them)",
            )
        if self.world_size > 1:
            lines.insert(0, f"{self.world_size} ranks; merged {self.merged_rows} rows from part files")
        if self.studies is not None:
            lines.append(f"studies aggregated: {self.studies}")
        if self.cams:
            lines.append(f"Grad-CAM overlays written: {self.cams}")
        if self.dicom_objects or self.dicom_failed:
            lines.append(
                f"DICOM results written: {self.dicom_objects} objects"
                + (f"; {self.dicom_failed} scans without (see the log)" if self.dicom_failed else "")
            )
        return "\n".join(lines)


def default_errors_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.errors.csv")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _thresholds(bundle_thresholds: dict[str, float], labels: list[str]) -> dict[str, float]:
    out = {}
    for label in labels:
        if label not in bundle_thresholds:
            log.warning("bundle has no operating point for class %r; flagging at 0.5", label)
        out[label] = float(bundle_thresholds.get(label, 0.5))
    return out


class _Counter(threading.Thread):
    """Counts the remaining scans in the background so the progress bar can show an ETA."""

    def __init__(self, source: Callable[[], Iterator[str]], bar: Any) -> None:
        super().__init__(daemon=True)
        self.source, self.bar = source, bar
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        for _ in self.source():
            if self.stop.is_set():
                return
            n += 1
        self.bar.total = n
        self.bar.refresh()


def _scoring_device(name: str, ctx: dist_utils.DistContext) -> torch.device:
    """The device this rank scores on: ``cuda:LOCAL_RANK`` under torchrun with ``auto``."""
    from xraytriage.utils.runtime import resolve_device

    if name == "auto" and ctx.initialized and torch.cuda.is_available():
        device = torch.device("cuda", ctx.local_rank)
    else:
        device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank if ctx.initialized else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


class ScoringRun:
    """One ``score`` run: its outputs, what is already answered, what is in flight, the counts.

    :meth:`run` is the sequence of steps, one method each. The paths handed to the decoding workers
    and not yet answered are ``pending``; ``queued`` maps every path this run drew to whether its
    answer (a row in the scores or errors journal) is written, so a crash isolation never scores a
    path twice.
    """

    def __init__(self, opts: ScoreOptions) -> None:
        from xraytriage.models import load_bundle
        from xraytriage.utils.runtime import resolve_amp_dtype

        self.opts = opts
        self.t0 = time.perf_counter()
        self.ctx = dist_utils.init_from_env()
        self.out = Path(opts.out)
        self.errors_out = Path(opts.errors) if opts.errors else default_errors_path(self.out)
        self.journal_path = journal_for(self.out)
        self.device = _scoring_device(opts.device, self.ctx)
        self.amp_dtype = resolve_amp_dtype(opts.amp, self.device)
        self.bundle = load_bundle(opts.model)
        self.labels = list(self.bundle.labels)
        self.thresholds = _thresholds(self.bundle.thresholds, self.labels)
        self.thr = np.array([self.thresholds[label] for label in self.labels], dtype=np.float64)
        self.expect = {"model_id": self.bundle.model_id}
        self.columns = score_columns(self.labels)
        # the files this process appends to: under torchrun, this rank's part files
        scores_file, errors_file = self.journal_path, self.errors_out
        if self.ctx.initialized:
            scores_file = dist_utils.part_path(self.journal_path, self.ctx.rank)
            errors_file = dist_utils.part_path(self.errors_out, self.ctx.rank)
        self.scores_j = CsvJournal(scores_file, self.columns)
        self.errors_j = CsvJournal(errors_file, ERROR_COLUMNS)
        preprocess = self.bundle.preprocess
        if opts.corrupt_pixel_data is not None:
            preprocess = preprocess.model_copy(update={"corrupt_pixel_data": opts.corrupt_pixel_data})
        self.dataset = StreamedScans(
            preprocess,
            self.bundle.model_config.in_channels,
            opts.file_timeout_s,
            skip_non_scans=not opts.strict,
        )
        self.notes_dir: str | None = None  # where a worker that ends itself on purpose says why
        self.summary = ScoreSummary(
            flagged=dict.fromkeys(self.labels, 0), rank=self.ctx.rank, world_size=self.ctx.world_size
        )
        self.checker = self._scope_checker()
        self.failures: Counter[str] = Counter()
        self.pending: dict[str, None] = {}  # drawn for a worker, no answer yet (insertion-ordered)
        self.queued: dict[str, bool] = {}  # every path drawn this run -> its answer is journaled
        self.skip: set[str] = set()  # answered by an earlier run
        self.error_keys: set[str] = set()
        self.runner: Runner | None = None
        self.model: torch.nn.Module | None = None
        self.bar: Any = None
        self.results = self._result_sink()

    def _result_sink(self) -> Any:
        """``--dicom-out``: the SR / Secondary Capture writer called with every batch's rows."""
        if self.opts.dicom_out is None:
            return None
        from xraytriage.scoring.dicom_out import DicomResultSink, DicomResultWriter

        writer = DicomResultWriter(
            Path(self.opts.dicom_out),
            self.labels,
            self.thresholds,
            self.bundle.operating_points,
            self.bundle.model_id,
            f"xraytriage {self.bundle.model_config.arch}",
        )
        return DicomResultSink(writer, self.columns)

    def _scope_checker(self) -> ScopeChecker | None:
        """The bundle's validated scope with the config's ``scope.*`` keys applied (None: check off)."""
        cfg = self.opts.scope or ScopeConfig()
        self.summary.out_of_scope_policy = self.opts.out_of_scope
        if not cfg.enabled:
            self.summary.scope_note = "scope check switched off (scope.enabled=false); in_scope left blank"
            return None
        scope = ValidatedScope.from_payload(self.bundle.scope).with_config(cfg)
        if scope.ood is None:
            self.summary.scope_note = (
                "image-based check unavailable: "
                + ("switched off (scope.ood=false)" if not cfg.ood else "the bundle has no feature reference")
                + (" (a bundle from before scopes: retrain to record one)" if not scope.recorded else "")
            )
            log.warning("%s", self.summary.scope_note)
        return ScopeChecker(scope)

    # ------------------------------------------------------------------ steps
    def run(self) -> ScoreSummary:
        """Check, lock, open the journals, build the engine, score, merge ranks, finish the outputs."""
        check_engine(self.opts.engine, self.device, self.opts.compile)  # before any output is opened
        if self.opts.cam_dir is not None:
            from xraytriage.scoring.cam import check_available

            check_available()
        with self._output_lock():
            self._forget_failures()
            try:
                self._open_journals()
                self.notes_dir = self.dataset.notes_dir = tempfile.mkdtemp(prefix="xraytriage-notes-")
                self._build_engine()
                self._score_all()
            finally:
                self.scores_j.close()
                self.errors_j.close()
                if self.notes_dir is not None:
                    shutil.rmtree(self.notes_dir, ignore_errors=True)
            self.summary.failed_by_reason = dict(self.failures)
            self._merge_ranks()
            if self.ctx.is_main:
                self._finish_outputs()
        if self.results is not None:
            self.summary.dicom_objects, self.summary.dicom_failed = self.results.written, self.results.failed
        self.summary.elapsed_s = time.perf_counter() - self.t0
        return self.summary

    @contextlib.contextmanager
    def _output_lock(self) -> Iterator[None]:
        """One run per output: rank 0 locks the scores and errors files; every rank learns the answer."""
        with contextlib.ExitStack() as stack:
            refused: OutputLocked | None = None
            if self.ctx.is_main:
                try:
                    targets = [self.out, self.errors_out]
                    if self.opts.dicom_out is not None:  # a folder: locked by FOLDER/.lock
                        Path(self.opts.dicom_out).mkdir(parents=True, exist_ok=True)
                        targets.append(Path(self.opts.dicom_out))
                    for target in dict.fromkeys(targets):
                        stack.enter_context(exclusive_lock(lock_file_for(target), str(target)))
                except OutputLocked as exc:
                    refused = exc
            if dist_utils.sum_across_ranks(self.ctx, [int(refused is not None)])[0]:
                raise refused or OutputLocked(f"{self.out} is in use by another xraytriage run")
            yield

    def _forget_failures(self) -> None:
        """``--retry-failed``: every rank reads the recorded failures before any rank clears them."""
        self.retry: set[str] = set()
        if self.opts.retry_failed:
            self.retry = dist_utils.recorded_keys(self.errors_out)
            dist_utils.sum_across_ranks(self.ctx, [0])  # barrier: all ranks have read the errors file
            dist_utils.clear_failures(self.errors_out, self.ctx)

    def _open_journals(self) -> None:
        """Open (and repair) the journals; collect the paths an earlier run already answered."""
        ctx, out, summary = self.ctx, self.out, self.summary
        if ctx.initialized:
            done = dist_utils.recorded_keys(self.journal_path)
            if is_parquet(out):
                done |= parquet_done(out)
            error_keys = dist_utils.recorded_keys(self.errors_out)
            done |= self.scores_j.open(self.expect)
            # rank 0 may clear the errors file while we read it
            error_keys = (error_keys - self.retry) | self.errors_j.open()
        else:
            done = self.scores_j.open(self.expect)
            if is_parquet(out):
                done |= parquet_done(out)
            parts = dist_utils.find_parts(self.journal_path)
            summary.merged_rows += dist_utils.merge_parts(self.scores_j, done, parts, self.expect)
            error_keys = self.errors_j.open()
            error_parts = dist_utils.find_parts(self.errors_out)
            summary.merged_rows += dist_utils.merge_parts(self.errors_j, error_keys, error_parts)
        if self.scores_j.repaired_bytes or self.errors_j.repaired_bytes:
            log.info("dropped a partial last line left by an interrupted run")
        self.error_keys = error_keys
        self.skip = done | error_keys
        summary.already_done = len(self.skip)

    def _build_engine(self) -> None:
        """Export/check the forward pass now, before any decoding process exists: a worker that dies
        later can never be mistaken for an engine failure (nor interrupt the export)."""
        opts, bundle = self.opts, self.bundle
        if opts.threads:
            torch.set_num_threads(opts.threads)
        self.model = prepare_model(bundle.model, self.device)
        self.runner = select_runner(
            self.model,
            self.device,
            opts.engine,
            compile=opts.compile,
            in_channels=bundle.model_config.in_channels,
            image_size=bundle.preprocess.image_size,
            weights_id=bundle.model_id,
            features=self.checker is not None and self.checker.ood_available,
        )
        self.summary.engine = self.runner.description
        log.info("scoring engine: %s", self.runner.description)

    def _score_all(self) -> None:
        """Decode in workers and score batch by batch; a dead worker sends its batch-mates to isolation."""
        from tqdm import tqdm

        from xraytriage.utils.progress import show_progress

        opts, ctx = self.opts, self.ctx
        show_bar = show_progress(opts.progress) and ctx.is_main
        self.bar = tqdm(
            desc=f"scoring (rank {ctx.rank})" if ctx.initialized else "scoring",
            unit="scan",
            disable=not show_bar,
            dynamic_ncols=True,
            smoothing=0.05,
        )
        counter: _Counter | None = None
        stream = self._stream()
        try:
            while True:
                batches = iter(self._loader(stream, opts.workers, opts.batch_size))  # workers fork here
                if counter is None and show_bar:
                    counter = _Counter(self._candidates, self.bar)  # started after the fork
                    counter.start()
                try:
                    for result in self._infer(batches):
                        self._process(result)
                    break
                except RuntimeError as exc:
                    if opts.workers == 0 or not worker_died(exc):
                        raise
                    del batches
                    self._isolate_crash()
        finally:
            if counter is not None:
                counter.stop.set()
            self.bar.close()

    # ------------------------------------------------------------------ paths
    def _already_done(self, path: str) -> bool:
        return path in self.skip or (not path.isascii() and display_path(path) in self.skip)

    def _candidates(self, on_error: Callable[[str, OSError], None] | None = None) -> Iterator[str]:
        """This rank's paths without an answer from an earlier run (also the ETA counter's source)."""
        for path in iter_inputs(self.opts.input, on_error=on_error):
            if self._already_done(path) or shard_of(path, self.ctx.world_size) != self.ctx.rank:
                continue
            yield path

    def _stream(self) -> Iterator[str]:
        """Candidates, each once (a list may name a file twice); unreadable folders are recorded."""
        for path in self._candidates(on_error=self._unreadable_folder):
            if path not in self.queued:
                self.queued[path] = False
                yield path

    def _tracked(self, paths: Iterator[str]) -> Iterator[str]:
        """Mark each path pending as a worker gets it. Drawing is shielded from SIGCHLD: an error
        raised inside the shared path generator would end it, and the rest of the input with it."""
        while True:
            with sigchld_deferred():
                path = next(paths, None)
                if path is None:
                    return
                self.pending[path] = None
            yield path

    def _unreadable_folder(self, folder: str, exc: OSError) -> None:
        """A folder discovery cannot list: its scans would never be triaged, so it is a failure row."""
        if folder in self.error_keys or shard_of(folder, self.ctx.world_size) != self.ctx.rank:
            return
        self.error_keys.add(folder)
        why = exc.strerror or exc.__class__.__name__
        message = f"this folder cannot be read ({why}); its scans were not scored"
        self._record_failure(ScanFailure(folder, "unreadable_folder", message))

    # ------------------------------------------------------------------ decoding and inference
    def _loader(self, paths: Iterator[str], workers: int, batch_size: int) -> torch.utils.data.DataLoader:
        from xraytriage.utils.runtime import worker_start_method

        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=PathStream(lambda: self._tracked(paths)),
            num_workers=workers,
            collate_fn=collate_scans,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=WorkerInit(self.opts.worker_memory_mb) if workers > 0 else None,
            prefetch_factor=self.opts.prefetch_factor if workers > 0 else None,
            **worker_start_method(self.bundle.preprocess.gpu_decode, workers),
        )

    def _infer(self, batches: Iterable[ScanBatch]) -> Iterator[BatchLogits]:
        """The shared inference loop (also validation's and evaluate's), one batch at a time."""
        assert self.runner is not None
        return iter_logits(
            self.runner.forward,
            batches,
            self.device,
            self.amp_dtype,
            channels_last=self.runner.channels_last,
            inference_mode=True,
            pad_to=self.opts.batch_size if self.opts.compile else None,
        )

    def _process(self, result: BatchLogits) -> None:
        """One batch: probabilities and flags, Grad-CAM, then the rows journaled as one step."""
        batch, logits = result.batch, result.logits
        now = _now()
        rows: list[list[object]] = []
        overlays: dict[tuple[str, str], np.ndarray] = {}
        flagged = np.zeros(len(self.labels), dtype=np.int64)
        out_of_scope: list[list[object]] = []  # skip policy: errors-file rows
        if logits is not None:
            probs = self.bundle.probabilities(logits).double().cpu().numpy()
            flags = probs >= self.thr
            verdicts = self._verdicts(batch, result.features)
            outside = np.array([v is not None and not v.in_scope for v in verdicts], dtype=bool)
            flagged = flags[~outside].sum(axis=0)
            flags[outside] = True  # never a negative for a scan the model was not validated on
            keep = ~outside if self.opts.out_of_scope == "skip" else np.ones(len(outside), dtype=bool)
            if self.opts.cam_dir is not None and (flags & keep[:, None]).any():
                overlays = self._write_cams(batch, result.inputs, flags & keep[:, None])
            for i, path in enumerate(batch.paths):
                verdict = verdicts[i]
                if not keep[i] and verdict is not None:
                    out_of_scope.append([path, OUT_OF_SCOPE, verdict.reason_text, now])
                    continue
                probs_text = [f"{p:.6f}" for p in probs[i]]
                scope_cells = _scope_cells(verdict, batch.facts[i])
                row = [path, batch.sop_uids[i], batch.study_uids[i], *probs_text, *flags[i].astype(int)]
                rows.append([*row, *scope_cells, self.bundle.model_id, now])
        failed = [[f.path, f.reason, f.message, now] for f in batch.failures]
        if self.results is not None and rows:
            self.results.record(rows, overlays)  # before the journal: a kill here rewrites, never skips
        with sigchld_deferred():  # append and bookkeeping happen whole, or not at all
            self.scores_j.append(rows)
            self.errors_j.append(out_of_scope + failed)
            self.summary.out_of_scope += int(outside.sum()) if logits is not None else 0
            for path in batch.paths:
                self._answered(path)
            for failure in batch.failures:
                self._answered(failure.path)
                self._count_failure(failure.reason)
            for k, label in enumerate(self.labels):
                self.summary.flagged[label] += int(flagged[k])
            self.summary.scored += len(rows)
            self.bar.update(len(rows) + len(failed) + len(out_of_scope))
            if failed:
                self.bar.set_postfix(failed=self.summary.failed, skipped=self.summary.skipped, refresh=False)

    def _verdicts(self, batch: ScanBatch, features: torch.Tensor | None) -> list[ScopeVerdict | None]:
        if self.checker is None:
            return [None] * len(batch.paths)
        return list(self.checker.check_batch(batch.facts, features))

    def _write_cams(
        self, batch: ScanBatch, inputs: torch.Tensor | None, flags: np.ndarray
    ) -> dict[tuple[str, str], np.ndarray]:
        """PNGs into --cam DIR; returns the overlays as RGB by (scan path, class) for --dicom-out."""
        from xraytriage.scoring.cam import make_overlays, save_overlays

        assert self.model is not None
        items = [
            (i, batch.paths[i], k, label)
            for i in range(len(batch.paths))
            for k, label in enumerate(self.labels)
            if flags[i, k]
        ]
        overlays = make_overlays(self.model, inputs, items, self.bundle.preprocess)
        self.summary.cams += save_overlays(overlays, items, self.opts.cam_dir)
        return {(path, label): bgr[..., ::-1] for (_, path, _, label), bgr in zip(items, overlays)}

    def _answered(self, path: str) -> None:
        self.pending.pop(path, None)
        self.queued[path] = True

    def _count_failure(self, reason: str) -> None:
        """A file that is plainly not a scan is skipped, not failed (unless --strict)."""
        if reason == NOT_A_SCAN:
            self.summary.skipped += 1
        else:
            self.failures[reason] += 1
            self.summary.failed += 1

    def _record_failure(self, failure: ScanFailure) -> None:
        with sigchld_deferred():
            self.errors_j.append([[failure.path, failure.reason, failure.message, _now()]])
            self._answered(failure.path)
            self._count_failure(failure.reason)
            self.bar.update(1)

    def _isolate_crash(self) -> None:
        """A worker died (a decoder segfault, a file over the time limit): retry the in-flight scans
        without an answer one per process, so only the culprit fails, with the reason it died of."""
        suspects = [path for path in self.pending if not self.queued.get(path)]
        self.pending.clear()
        log.warning("a decoding process died; retrying %d in-flight scans one at a time", len(suspects))
        for path in suspects:
            started = time.monotonic()
            try:
                for result in self._infer(self._loader(iter([path]), 1, 1)):
                    self._process(result)
            except RuntimeError as exc:
                if not worker_died(exc):
                    raise
                note = read_death_note(self.notes_dir, path)
                if note is not None:
                    reason, message = note
                else:
                    reason = death_reason(exc, time.monotonic() - started, self.opts.file_timeout_s)
                    message = f"{CRASH_REASONS[reason]}; {exc}"
                    if reason == "timeout":
                        message = f"decoding took longer than {self.opts.file_timeout_s:g} s; {exc}"
                self._record_failure(ScanFailure(path, reason, message))

    # ------------------------------------------------------------------ finishing
    def _merge_ranks(self) -> None:
        """Under torchrun: sum the counts over ranks, and rank 0 merges every rank's part files."""
        ctx, summary, labels = self.ctx, self.summary, self.labels
        if not ctx.initialized:
            return
        counts = [summary.scored, summary.failed, *[summary.flagged[label] for label in labels], summary.cams]
        counts += [summary.already_done if ctx.is_main else 0, summary.out_of_scope, summary.skipped]
        totals = dist_utils.sum_across_ranks(ctx, counts)
        summary.scored, summary.failed = totals[0], totals[1]
        summary.flagged = {label: totals[2 + k] for k, label in enumerate(labels)}
        summary.cams = totals[2 + len(labels)]
        summary.skipped, summary.out_of_scope = totals[-1], totals[-2]
        if ctx.is_main:
            main_scores = CsvJournal(self.journal_path, self.columns)
            main_errors = CsvJournal(self.errors_out, ERROR_COLUMNS)
            try:
                merged_done = main_scores.open(self.expect)
                if is_parquet(self.out):
                    merged_done |= parquet_done(self.out)
                summary.merged_rows += dist_utils.merge_parts(
                    main_scores, merged_done, dist_utils.find_parts(self.journal_path), self.expect
                )
                summary.merged_rows += dist_utils.merge_parts(
                    main_errors, main_errors.open(), dist_utils.find_parts(self.errors_out)
                )
            finally:
                main_scores.close()
                main_errors.close()
        dist_utils.sum_across_ranks(ctx, [0])  # everyone waits for the merge before exiting
        dist_utils.shutdown(ctx)

    def _finish_outputs(self) -> None:
        """Rank 0: fold a Parquet journal, count the errors file, aggregate studies."""
        if is_parquet(self.out):
            finalize_parquet(self.out, self.labels)
        reasons = error_reason_counts(self.errors_out)
        self.summary.out_of_scope_total = reasons[OUT_OF_SCOPE]
        self.summary.skipped_total = reasons[NOT_A_SCAN]
        failed_rows = sum(reasons.values()) - self.summary.skipped_total - self.summary.out_of_scope_total
        self.summary.errors_total = failed_rows + (self.summary.skipped_total if self.opts.strict else 0)
        if self.opts.studies is not None:
            scores = read_scores(self.out, self.labels)
            self.summary.studies = aggregate_studies(scores, self.labels, self.thresholds, self.opts.studies)


def _scope_cells(verdict: ScopeVerdict | None, facts: ScanFacts) -> list[object]:
    """in_scope, scope_reasons, ood_score, study_date, view, manufacturer, site (outputs.SCOPE_COLUMNS)."""
    in_scope: object = "" if verdict is None else int(verdict.in_scope)
    reasons = "" if verdict is None else verdict.reason_text
    ood = verdict.ood_score if verdict is not None else None
    ood_text = f"{ood:.4f}" if ood is not None and np.isfinite(ood) else ""
    return [
        in_scope,
        reasons,
        ood_text,
        facts.study_date or "",
        facts.view or "",
        facts.manufacturer or "",
        facts.site or "",
    ]


def score(opts: ScoreOptions) -> ScoreSummary:
    """Score every scan of ``opts.input`` not yet in ``opts.out``; see ``docs/scoring.md``."""
    return ScoringRun(opts).run()
