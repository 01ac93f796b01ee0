"""Scale-out under ``torchrun``: each rank scores its shard into a part file; rank 0 merges them.

Part files are ordinary journals (see :mod:`xraytriage.scoring.journal`), so a killed multi-GPU or
multi-node run resumes like a single-process one, and a later run of any world size (or none) merges
what an interrupted run left behind. Only a gloo process group is used (one ``all_reduce`` of the
counts, which is also the barrier): no NCCL, no GPU collectives, CPU-only nodes work too.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from xraytriage.scoring.journal import ENCODING_ERRORS, CsvJournal, JournalMismatch, _repair_tail


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(timeout_hours: float = 24.0) -> DistContext:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; join a gloo group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=dt.timedelta(hours=timeout_hours))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, initialized=True)


def sum_across_ranks(ctx: DistContext, values: list[int]) -> list[int]:
    """Sum integer counters over all ranks; doubles as the barrier before rank 0 merges."""
    if not ctx.initialized:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]


def shutdown(ctx: DistContext) -> None:
    if ctx.initialized:
        import torch.distributed as dist

        dist.destroy_process_group()


def part_path(out: str | Path, rank: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.rank{rank}.part")


def find_parts(out: str | Path) -> list[Path]:
    out = Path(out)
    return sorted(out.parent.glob(f"{out.name}.rank*.part"))


def read_keys(path: Path, key: str = "path") -> set[str]:
    """Keys of complete rows in a journal someone else may be writing (read-only, no repair)."""
    keys: set[str] = set()
    try:
        with open(path, encoding="utf-8", errors=ENCODING_ERRORS, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or key not in header:
                return keys
            index = header.index(key)
            for row in reader:
                if len(row) == len(header):
                    keys.add(row[index])
    except FileNotFoundError:  # absent, or deleted by rank 0 since it was listed
        pass
    return keys


def part_rank(part: Path) -> int | None:
    """The rank of a part file's name (``SCORES.csv.rank3.part`` -> 3); None for another name."""
    match = re.fullmatch(r".*\.rank(\d+)\.part", part.name)
    return int(match.group(1)) if match else None


def recorded_keys(out: str | Path) -> set[str]:
    """Paths with a row in ``out`` or in any rank's part file beside it (e.g. left by an interrupted run)."""
    keys = read_keys(Path(out))
    for part in find_parts(out):
        keys |= read_keys(part)
    return keys


def clear_failures(errors_out: str | Path, ctx: DistContext) -> list[Path]:
    """``--retry-failed``: forget the recorded failures; returns the files deleted.

    Call it only once every rank has read the failures (:func:`recorded_keys`) (a barrier between). Each rank
    deletes its own errors part; rank 0 also deletes the errors file and the parts of ranks that this
    run does not have (left by a run with more ranks). Without torchrun that is all of them. A scan
    that fails again gets a new row; a run killed after this point simply scores them as new.
    """
    errors_out = Path(errors_out)
    doomed = [part_path(errors_out, ctx.rank)]
    if ctx.is_main:
        doomed.append(errors_out)
        doomed += [p for p in find_parts(errors_out) if (part_rank(p) or 0) >= ctx.world_size]
    deleted = []
    for path in doomed:
        try:
            path.unlink()
            deleted.append(path)
        except FileNotFoundError:
            pass
    return deleted


def merge_parts(
    target: CsvJournal,
    done: set[str],
    parts: list[Path],
    expect: dict[str, str] | None = None,
    chunk: int = 10_000,
) -> int:
    """Append the parts' rows that ``target`` lacks, then delete the parts; returns rows added.

    Safe to interrupt: rows are appended before a part is deleted, and a rerun skips rows whose key
    is already in the target, so a merge killed half-way neither loses nor duplicates rows.
    """
    added = 0
    for part in parts:
        _repair_tail(part)
        with open(part, encoding="utf-8", errors=ENCODING_ERRORS, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                part.unlink()
                continue
            if header != target.columns:
                raise JournalMismatch(f"{part}: columns differ from {target.path}; it is from another model")
            key_index = header.index(target.key)
            checks = [(header.index(c), c, v) for c, v in (expect or {}).items()]
            pending: list[list[str]] = []
            for row in reader:
                if len(row) != len(header) or row[key_index] in done:
                    continue
                for index, column, value in checks:
                    if row[index] != value:
                        got = row[index]
                        raise JournalMismatch(f"{part}: rows have {column}={got!r}, expected {value!r}")
                done.add(row[key_index])
                pending.append(row)
                if len(pending) >= chunk:
                    target.append(pending)
                    added += len(pending)
                    pending = []
            target.append(pending)
            added += len(pending)
        part.unlink()
    return added
