"""DataLoader pieces for scoring: a streamed path sampler, a decoding dataset and a failure-tolerant collate.

The main process owns the (lazy) file list and hands paths to the workers a few batches ahead, so the
list is never materialised. Workers decode with ``load_image`` and build the input with
``image_to_tensor`` and the bundle's own ``PreprocessConfig``: exactly the training preprocessing.
A scan that fails becomes an error item in its batch instead of an exception, so one bad file never
stops the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from xraytriage.config import PreprocessConfig
from xraytriage.scoring.discovery import NOT_A_SCAN, non_scan_kind


class PathStream(torch.utils.data.Sampler):
    """A sampler whose "indices" are file paths, drawn lazily from ``source`` (no ``len``)."""

    def __init__(self, source: Callable[[], Iterable[str]]) -> None:
        self.source = source

    def __iter__(self) -> Iterator[str]:
        return iter(self.source())


class ScanDataset(torch.utils.data.Dataset):
    """``dataset[path]`` -> dict with the input tensor, or the failure's reason code and message.

    ``skip_non_scans``: a file that is plainly not a scan (text, a DICOMDIR, ...) gets the reason
    ``not_a_scan`` instead of its decoding failure (``score --strict`` turns this off).
    """

    def __init__(self, preprocess: PreprocessConfig, in_channels: int, skip_non_scans: bool = True) -> None:
        self.preprocess = preprocess
        self.in_channels = in_channels
        self.skip_non_scans = skip_non_scans

    def __getitem__(self, path: str) -> dict[str, Any]:  # type: ignore[override]
        from xraytriage.data.tensors import image_to_tensor
        from xraytriage.io import REASONS, UnreadableImage, load_image

        try:
            image, meta = load_image(path, self.preprocess)
            tensor = image_to_tensor(image, self.preprocess, self.in_channels)
        except UnreadableImage as exc:
            kind = non_scan_kind(path, exc.reason) if self.skip_non_scans else None
            if kind is not None:
                return {"path": path, "reason": NOT_A_SCAN, "message": f"skipped: {kind}, not a scan"}
            message = REASONS[exc.reason] + (f" ({exc.detail})" if exc.detail else "")
            return {"path": path, "reason": exc.reason, "message": message}
        except Exception as exc:  # anything else is still one file's problem, not the run's
            return {"path": path, "reason": "internal_error", "message": f"{exc.__class__.__name__}: {exc}"}
        return {
            "path": path,
            "tensor": tensor,
            "sop_uid": meta.sop_uid or "",
            "study_uid": meta.study_uid or "",
        }


@dataclass
class ScanBatch:
    """Decoded scans stacked for the network, plus the failures of the same batch."""

    paths: list[str]
    sop_uids: list[str]
    study_uids: list[str]
    tensor: torch.Tensor | None
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, message)

    def pin_memory(self) -> ScanBatch:
        if self.tensor is not None:
            self.tensor = self.tensor.pin_memory()
        return self


def collate_scans(items: list[dict[str, Any]]) -> ScanBatch:
    ok = [it for it in items if "tensor" in it]
    failures = [(it["path"], it["reason"], it["message"]) for it in items if "tensor" not in it]
    tensor = torch.stack([it["tensor"] for it in ok]) if ok else None
    return ScanBatch(
        paths=[it["path"] for it in ok],
        sop_uids=[it["sop_uid"] for it in ok],
        study_uids=[it["study_uid"] for it in ok],
        tensor=tensor,
        failures=failures,
    )


def worker_init(_worker_id: int) -> None:
    """One torch thread per worker: the workers are the parallelism.

    Do not call ``cv2.setNumThreads`` here: in a forked child whose parent had used OpenCV's thread
    pool it deadlocks for ever (``pthread_cond_destroy`` on the inherited pool; seen with a naive
    loop run before scoring in the same process). OpenCV's own fork handling is fine otherwise.
    """
    torch.set_num_threads(1)
