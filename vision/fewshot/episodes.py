"""Episodic N-way K-shot sampling: support and query sets drawn from one split's classes.

An episode picks ``way`` classes of the split at random, then ``shot + query`` distinct images of each; the first
``shot`` form the support set and the rest the query set, so support and query never share an image. Episode
labels are 0..way-1 in the order the classes were drawn (a fresh random assignment every episode). The classes of
an episode all come from the split asked for, so base (meta-training) and novel (meta-test) classes never mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .datasets import FewShotData

__all__ = ["Episode", "EpisodeSampler"]


@dataclass
class Episode:
    """A batch of B episodes. Images uint8 (B, n, C, H, W); labels (B, n) in [0, way); indices into the data and
    the global class of each episode label."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    support_index: Tensor
    query_index: Tensor
    classes: Tensor          # (B, way) global class ids

    @property
    def way(self) -> int:
        return int(self.classes.shape[1])

    def to(self, device: str | torch.device) -> Episode:
        return Episode(*(getattr(self, f).to(device) for f in ("support_x", "support_y", "query_x", "query_y",
                                                              "support_index", "query_index", "classes")))


class EpisodeSampler:
    """Draws episodes of ``split`` (a key of ``data.splits``) with a seeded generator."""

    def __init__(self, data: FewShotData, split: str, way: int, shot: int, query: int, seed: int = 0) -> None:
        if split not in data.splits:
            raise ValueError(f"{data.source}: no split {split!r}; it has {', '.join(data.splits)} (--split)")
        if way < 2 or shot < 1 or query < 1:
            raise ValueError(f"need way >= 2, shot >= 1 and query >= 1, got {way}, {shot}, {query}")
        self.data, self.split, self.way, self.shot, self.query = data, split, int(way), int(shot), int(query)
        self.class_ids = torch.as_tensor(data.splits[split], dtype=torch.int64)
        if len(self.class_ids) < way:
            raise ValueError(f"{data.source}: split {split!r} has {len(self.class_ids)} classes, fewer than "
                             f"way={way} (--way)")
        y = data.y.cpu()
        self.members = [torch.nonzero(y == c).squeeze(1) for c in self.class_ids.tolist()]
        need = shot + query
        for c, m in zip(self.class_ids.tolist(), self.members):
            if len(m) < need:
                raise ValueError(f"{data.source}: class {data.classes[c]!r} has {len(m)} images, an episode needs "
                                 f"shot + query = {need} (--shot/--query)")
        self.gen = torch.Generator().manual_seed(int(seed))

    def sample(self, batch: int = 1) -> Episode:
        """``batch`` independent episodes."""
        s_idx, q_idx, cls = [], [], []
        for _ in range(batch):
            pick = torch.randperm(len(self.class_ids), generator=self.gen)[: self.way]
            s_rows, q_rows = [], []
            for p in pick.tolist():
                m = self.members[p]
                chosen = m[torch.randperm(len(m), generator=self.gen)[: self.shot + self.query]]
                s_rows.append(chosen[: self.shot])
                q_rows.append(chosen[self.shot:])
            s_idx.append(torch.stack(s_rows))     # (way, shot)
            q_idx.append(torch.stack(q_rows))     # (way, query)
            cls.append(self.class_ids[pick])
        s_idx_t, q_idx_t = torch.stack(s_idx), torch.stack(q_idx)
        lab = torch.arange(self.way)
        s_y = lab.view(1, -1, 1).expand(batch, -1, self.shot).reshape(batch, -1)
        q_y = lab.view(1, -1, 1).expand(batch, -1, self.query).reshape(batch, -1)
        s_flat, q_flat = s_idx_t.reshape(batch, -1), q_idx_t.reshape(batch, -1)
        x = self.data.x
        dev = x.device
        return Episode(x[s_flat.to(dev)], s_y.to(dev), x[q_flat.to(dev)], q_y.to(dev), s_flat.to(dev),
                       q_flat.to(dev), torch.stack(cls).to(dev))
