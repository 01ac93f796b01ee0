"""Batch scoring of a folder / path list / manifest: streamed, resumable, error-tolerant.

Flow (per rank under torchrun): stream candidate paths -> skip those already in the outputs -> keep
this rank's shard -> DataLoader workers decode + preprocess (bundle's PreprocessConfig, via
``image_to_tensor``) -> batched inference (AMP + channels_last on GPU; ONNX Runtime on CPU, see
``scoring.engine``) -> one durable append per batch to the scores and errors journals. Rank 0 merges
the part files after all ranks finish.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xraytriage.scoring import distributed as dist_utils
from xraytriage.scoring.dataset import (
    PathStream,
    ScanBatch,
    ScanDataset,
    collate_scans,
    worker_init,
)
from xraytriage.scoring.discovery import NOT_A_SCAN, iter_inputs, shard_of
from xraytriage.scoring.engine import Runner, check_engine, prepare_model, select_runner
from xraytriage.scoring.journal import CsvJournal
from xraytriage.scoring.outputs import (
    ERROR_COLUMNS,
    aggregate_studies,
    count_error_rows,
    finalize_parquet,
    is_parquet,
    journal_for,
    parquet_done,
    read_scores,
    score_columns,
)
from xraytriage.training.predict import BatchLogits, iter_logits

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
    merged_rows: int = 0
    studies: int | None = None
    cams: int = 0
    elapsed_s: float = 0.0
    rank: int = 0
    world_size: int = 1
    engine: str = ""

    @property
    def rate(self) -> float:
        return (self.scored + self.failed + self.skipped) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def text(self) -> str:
        flagged = ", ".join(f"{k}={v}" for k, v in self.flagged.items()) or "-"
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.failed_by_reason.items()))
        lines = [
            f"scored {self.scored} scans, failed {self.failed}" + (f" ({reasons})" if reasons else ""),
            f"flagged per class: {flagged}",
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


def _worker_died(exc: BaseException) -> bool:
    return "DataLoader worker" in str(exc) and ("exited unexpectedly" in str(exc) or "killed" in str(exc))


def score(opts: ScoreOptions) -> ScoreSummary:
    """Score every scan of ``opts.input`` not yet in ``opts.out``; see ``docs/scoring.md``."""
    from tqdm import tqdm

    from xraytriage.models import load_bundle
    from xraytriage.utils.progress import show_progress
    from xraytriage.utils.runtime import resolve_amp_dtype, resolve_device, worker_start_method

    t0 = time.perf_counter()
    ctx = dist_utils.init_from_env()
    out = Path(opts.out)
    errors_out = Path(opts.errors) if opts.errors else default_errors_path(out)
    journal_path = journal_for(out)

    if opts.device == "auto" and ctx.initialized and torch.cuda.is_available():
        device = torch.device("cuda", ctx.local_rank)
    else:
        device = resolve_device(opts.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank if ctx.initialized else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    bundle = load_bundle(opts.model)
    labels = list(bundle.labels)
    thresholds = _thresholds(bundle.thresholds, labels)
    thr = np.array([thresholds[label] for label in labels], dtype=np.float64)
    expect = {"model_id": bundle.model_id}
    if opts.cam_dir is not None:
        from xraytriage.scoring.cam import check_available

        check_available()

    columns = score_columns(labels)
    summary = ScoreSummary(flagged=dict.fromkeys(labels, 0), rank=ctx.rank, world_size=ctx.world_size)

    check_engine(opts.engine, device, opts.compile)  # a choice that cannot work fails before any output

    # --retry-failed: the recorded failures are scored again (each rank its shard of them, like any
    # path). Every rank reads them before any rank clears them; rank 0 merges the new failures as usual.
    retry: set[str] = set()
    if opts.retry_failed:
        retry = dist_utils.recorded_keys(errors_out)
        dist_utils.sum_across_ranks(ctx, [0])  # barrier: all ranks have read the errors file
        dist_utils.clear_failures(errors_out, ctx)

    # Outputs this process appends to, and the set of paths that already have an answer.
    if ctx.initialized:
        scores_j = CsvJournal(dist_utils.part_path(journal_path, ctx.rank), columns)
        errors_j = CsvJournal(dist_utils.part_path(errors_out, ctx.rank), ERROR_COLUMNS)
        done = dist_utils.recorded_keys(journal_path)
        if is_parquet(out):
            done |= parquet_done(out)
        error_keys = dist_utils.recorded_keys(errors_out)
        done |= scores_j.open(expect)
        error_keys = (error_keys - retry) | errors_j.open()  # rank 0 may clear the file while we read
    else:
        scores_j = CsvJournal(journal_path, columns)
        errors_j = CsvJournal(errors_out, ERROR_COLUMNS)
        done = scores_j.open(expect)
        if is_parquet(out):
            done |= parquet_done(out)
        parts = dist_utils.find_parts(journal_path)
        summary.merged_rows += dist_utils.merge_parts(scores_j, done, parts, expect)
        error_keys = errors_j.open()
        summary.merged_rows += dist_utils.merge_parts(errors_j, error_keys, dist_utils.find_parts(errors_out))
    if scores_j.repaired_bytes or errors_j.repaired_bytes:
        log.info("dropped a partial last line left by an interrupted run")
    skip = done | error_keys
    summary.already_done = len(skip)

    def source() -> Iterator[str]:  # called by the sampler and by the ETA counter
        for path in iter_inputs(opts.input):
            if path in skip or shard_of(path, ctx.world_size) != ctx.rank:
                continue
            yield path

    queued: set[str] = set()

    def unique_source() -> Iterator[str]:  # a list may name a file twice: score it once
        for path in source():
            if path not in queued:
                queued.add(path)
                yield path

    if opts.threads:
        torch.set_num_threads(opts.threads)
    model = prepare_model(bundle.model, device)
    runner: Runner | None = None  # built once the decoding workers are running (export overlaps decoding)

    def build_runner() -> Runner:
        built = select_runner(
            model,
            device,
            opts.engine,
            compile=opts.compile,
            in_channels=bundle.model_config.in_channels,
            image_size=bundle.preprocess.image_size,
            weights_id=bundle.model_id,
        )
        summary.engine = built.description
        log.info("scoring engine: %s", built.description)
        return built

    amp_dtype = resolve_amp_dtype(opts.amp, device)
    cuda = device.type == "cuda"
    in_channels = bundle.model_config.in_channels
    dataset = ScanDataset(bundle.preprocess, in_channels, skip_non_scans=not opts.strict)
    pending: dict[str, None] = {}  # handed to a worker, no answer yet (insertion-ordered)

    def tracked(paths: Iterator[str]) -> Iterator[str]:
        for path in paths:
            pending[path] = None
            yield path

    def make_loader(paths: Iterator[str], workers: int, batch_size: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=PathStream(lambda: tracked(paths)),
            num_workers=workers,
            collate_fn=collate_scans,
            pin_memory=cuda,
            worker_init_fn=worker_init if workers > 0 else None,
            prefetch_factor=opts.prefetch_factor if workers > 0 else None,
            **worker_start_method(bundle.preprocess.gpu_decode, workers),
        )

    failures: Counter[str] = Counter()
    show_bar = show_progress(opts.progress)
    bar = tqdm(
        desc=f"scoring (rank {ctx.rank})" if ctx.initialized else "scoring",
        unit="scan",
        disable=not (show_bar and ctx.is_main),
        dynamic_ncols=True,
        smoothing=0.05,
    )

    def infer(batches: Iterable[ScanBatch]) -> Iterator[BatchLogits[ScanBatch]]:
        """The shared inference loop (also validation's and evaluate's), one batch at a time."""
        assert runner is not None
        return iter_logits(
            runner.forward,
            batches,
            device,
            lambda b: b.tensor,
            amp_dtype,
            channels_last=runner.channels_last,
            inference_mode=True,
            pad_to=opts.batch_size if opts.compile else None,
        )

    def process(result: BatchLogits[ScanBatch]) -> None:
        batch, x, logits = result.batch, result.inputs, result.logits
        now = _now()
        rows: list[list[object]] = []
        if logits is not None:
            probs = bundle.probabilities(logits).double().cpu().numpy()
            flags = probs >= thr
            for k, label in enumerate(labels):
                summary.flagged[label] += int(flags[:, k].sum())
            if opts.cam_dir is not None and flags.any():
                from xraytriage.scoring.cam import write_cams

                items = [
                    (i, batch.paths[i], k, label)
                    for i in range(len(batch.paths))
                    for k, label in enumerate(labels)
                    if flags[i, k]
                ]
                summary.cams += write_cams(model, x, items, bundle.preprocess, opts.cam_dir)
            for i, path in enumerate(batch.paths):
                rows.append(
                    [
                        path,
                        batch.sop_uids[i],
                        batch.study_uids[i],
                        *[f"{p:.6f}" for p in probs[i]],
                        *[int(f) for f in flags[i]],
                        bundle.model_id,
                        now,
                    ]
                )
        scores_j.append(rows)
        errors_j.append([[path, reason, message, now] for path, reason, message in batch.failures])
        for path in batch.paths:
            pending.pop(path, None)
        for path, reason, _ in batch.failures:
            pending.pop(path, None)
            if reason == NOT_A_SCAN:
                summary.skipped += 1
            else:
                failures[reason] += 1
                summary.failed += 1
        summary.scored += len(rows)
        bar.update(len(rows) + len(batch.failures))
        if batch.failures:
            bar.set_postfix(failed=summary.failed, skipped=summary.skipped, refresh=False)

    def isolate_crash() -> None:
        """A worker died (e.g. a decoder segfault): retry the in-flight scans one per process."""
        suspects = list(pending)
        pending.clear()
        log.warning("a decoding process died; retrying %d in-flight scans one at a time", len(suspects))
        for path in suspects:
            try:
                for result in infer(make_loader(iter([path]), 1, 1)):
                    process(result)
            except RuntimeError as exc:
                if not _worker_died(exc):
                    raise
                pending.pop(path, None)
                message = f"the decoding process died on this file ({exc})"
                errors_j.append([[path, "decoder_crashed", message, _now()]])
                failures["decoder_crashed"] += 1
                summary.failed += 1
                bar.update(1)

    counter: _Counter | None = None
    stream = unique_source()
    try:
        while True:
            batches = iter(make_loader(stream, opts.workers, opts.batch_size))  # workers fork here
            if runner is None:
                runner = build_runner()  # the workers decode the first batches meanwhile
            if counter is None and show_bar and ctx.is_main:
                counter = _Counter(source, bar)  # started after the fork, never inherited by workers
                counter.start()
            try:
                for result in infer(batches):
                    process(result)
                break
            except RuntimeError as exc:
                if opts.workers == 0 or not _worker_died(exc):
                    raise
                del batches
                isolate_crash()
    finally:
        if counter is not None:
            counter.stop.set()
        bar.close()
        scores_j.close()
        errors_j.close()
    summary.failed_by_reason = dict(failures)

    if ctx.initialized:
        counts = [summary.scored, summary.failed, *[summary.flagged[label] for label in labels], summary.cams]
        counts += [summary.already_done if ctx.is_main else 0, summary.skipped]
        totals = dist_utils.sum_across_ranks(ctx, counts)
        summary.scored, summary.failed = totals[0], totals[1]
        summary.flagged = {label: totals[2 + k] for k, label in enumerate(labels)}
        summary.cams = totals[2 + len(labels)]
        summary.skipped = totals[-1]
        if ctx.is_main:
            main_scores = CsvJournal(journal_path, columns)
            main_errors = CsvJournal(errors_out, ERROR_COLUMNS)
            try:
                merged_done = main_scores.open(expect)
                if is_parquet(out):
                    merged_done |= parquet_done(out)
                summary.merged_rows += dist_utils.merge_parts(
                    main_scores, merged_done, dist_utils.find_parts(journal_path), expect
                )
                summary.merged_rows += dist_utils.merge_parts(
                    main_errors, main_errors.open(), dist_utils.find_parts(errors_out)
                )
            finally:
                main_scores.close()
                main_errors.close()
        dist_utils.sum_across_ranks(ctx, [0])  # everyone waits for the merge before exiting
        dist_utils.shutdown(ctx)
        if not ctx.is_main:
            summary.elapsed_s = time.perf_counter() - t0
            return summary

    if is_parquet(out):
        finalize_parquet(out, labels)
    failed_rows, summary.skipped_total = count_error_rows(errors_out, NOT_A_SCAN)
    summary.errors_total = failed_rows + (summary.skipped_total if opts.strict else 0)
    if opts.studies is not None:
        summary.studies = aggregate_studies(read_scores(out, labels), labels, thresholds, opts.studies)
    summary.elapsed_s = time.perf_counter() - t0
    return summary
