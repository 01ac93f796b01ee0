"""Batch scoring of scan folders: streamed discovery, resumable journals, torchrun scale-out."""

from xraytriage.scoring.runner import ScoreOptions, ScoreSummary, score

__all__ = ["ScoreOptions", "ScoreSummary", "score"]
