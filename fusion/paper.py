"""The paper's own tables, for the evaluation report to set our figures beside them.

Qiu et al., ICCV 2017 (../shared/REFERENCE.md): Sports-1M, 20 randomly sampled clips a video, one centre
crop each, clip scores averaged; hit@k counts a video when any of its labels is among its top k (the
protocol of Karpathy et al., CVPR 2014, that P3D and C3D report).
"""
from __future__ import annotations

import pandas as pd

from fusion.report import markdown_table

# dataset format -> (method, clip hit@1, video hit@1, video hit@5), percent
PAPER_TABLES = {"sports1m": (("P3D ResNet (paper)", 47.9, 66.4, 87.4), ("ResNet-152 (paper)", 46.5, 64.6, 86.4),
                             ("C3D (paper)", 46.1, 61.1, 85.2))}
PAPER_COLUMNS = ("clip_hit@1", "video_hit@1", "video_hit@5")


def paper_comparison(table: pd.DataFrame, protocol: str) -> str:
    """Markdown: the paper's table of the protocol's data set (its first word: the format), its rows and
    then ours (the network streams and the fusion of a results table) in its columns; "" for a data set
    the paper gives no such table for."""
    paper = PAPER_TABLES.get(protocol.split(" ")[0])
    if paper is None:
        return ""
    rows = [[name, *(f"{v:.1f}" for v in values)] for name, *values in paper]
    rows += [[f"ours: {row['method']}", *("-" if pd.isna(row[c]) else f"{row[c]:.1f}" for c in PAPER_COLUMNS)]
             for _, row in table[table["method"].isin(["rgb", "flow", "fusion"])].iterrows()]
    lines = ["### As the paper's table (its figures, then ours)", "",
             *markdown_table(["method", "clip hit@1", "video hit@1", "video hit@5"], rows)]
    return "\n".join(lines) + "\n"
