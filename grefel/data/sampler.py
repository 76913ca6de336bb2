"""Data refinement (paper §4.1): a class-balanced, group-capped draw of B per class per epoch.

"During training, N_pg images are randomly selected from each video or face group. From these,
B images per expression are chosen for training, creating a batch of (B x N_cls) images per
epoch." Each epoch `RefinedSampler`:

1. keeps at most `per_group` (N_pg) images of every group, a fresh random subset each epoch
   (an empty group string means the sample is a group of its own);
2. takes `per_class` (B) images of every class from what was kept: without replacement when the
   class has at least B, otherwise all of them once and the rest again (repeats only where the
   class is short). A class that the cap happened to empty draws from its uncapped images, so
   the epoch length never changes. With `repeat=False` a class with fewer than B images gives
   each of them once instead (min(B, n_c) images: the majority classes are cut to B, the rare
   ones are not copied many times over; on a set as imbalanced as muxspace/facial_expressions,
   where fear has 17 training images, B = 300 would show each of them 18 times an epoch);
3. shuffles the B x C indices. Classes with no image at all are left out (B x classes present).

Under DDP every rank computes the same draw from (seed, epoch) and takes every world_size-th
index from position `rank`, after padding the draw by repeating its head to a multiple of
world_size, as torch's DistributedSampler does: the rank shares are disjoint slices whose union
is the epoch's draw.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterator, List, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["RefinedSampler"]


class RefinedSampler(Sampler):
    """Per-epoch balanced draw over dataset indices (see the module docstring).

    Args:
        labels: class index of every dataset item.
        groups: video / identity / face group of every item ("" = a group of its own).
        num_classes: C.
        per_class: B, images drawn per class per epoch.
        per_group: N_pg, the most images kept per group per epoch (<= 0: no cap).
        seed: the draw is a function of (seed, epoch) only.
        rank, world_size: this process's place under DDP.
        repeat: a class with fewer than B images fills its B by repeating them (the paper's B x
            C epoch); False: each of them once.
    """

    def __init__(
        self,
        labels: Sequence[int],
        groups: Sequence[str],
        num_classes: int,
        per_class: int,
        per_group: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeat: bool = True,
    ) -> None:
        if len(labels) != len(groups):
            raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
        if per_class < 1:
            raise ValueError(f"per_class (B) must be >= 1, got {per_class}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= num_classes):
            raise ValueError(f"labels must lie in 0..{num_classes - 1}")
        self.num_classes = num_classes
        self.per_class = per_class
        self.per_group = per_group
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.repeat = repeat
        self.epoch = 0
        self._groups = self._group_members(groups)
        self._by_class = [np.flatnonzero(self.labels == c) for c in range(num_classes)]
        self.classes_present = [c for c in range(num_classes) if len(self._by_class[c])]
        self._counts = {c: per_class if repeat else min(per_class, len(self._by_class[c]))
                        for c in self.classes_present}
        self.epoch_size = sum(self._counts.values())  # B x C (repeat), else sum min(B, n_c)
        self.num_samples = -(-self.epoch_size // world_size)  # this rank's share, ceil

    @staticmethod
    def _group_members(groups: Sequence[str]) -> List[np.ndarray]:
        members: Dict[str, List[int]] = defaultdict(list)
        singles = []
        for i, g in enumerate(groups):
            if g:
                members[g].append(i)
            else:
                singles.append(i)
        big = [np.asarray(v, dtype=np.int64) for _, v in sorted(members.items())]
        return big + [np.asarray([i], dtype=np.int64) for i in singles]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])

    def _capped(self, rng: np.random.Generator) -> np.ndarray:
        """Step 1: at most per_group random members of every group."""
        if self.per_group <= 0:
            return np.arange(len(self.labels))
        kept = [m if len(m) <= self.per_group else rng.choice(m, self.per_group, replace=False)
                for m in self._groups]
        return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)

    def _take(self, pool: np.ndarray, rng: np.random.Generator, b: int,
              whole_class: np.ndarray) -> np.ndarray:
        """Step 2: b indices from `pool`; without `repeat`, a pool the group cap left short is
        topped up from the rest of its class (b <= the class size), else repeats only when the
        pool has fewer than b."""
        if len(pool) >= b:
            return rng.choice(pool, b, replace=False)
        if not self.repeat:
            rest = np.setdiff1d(whole_class, pool)
            return np.concatenate([pool, rng.choice(rest, b - len(pool), replace=False)])
        reps, rest = divmod(b, len(pool))
        whole = [rng.permutation(pool) for _ in range(reps)]
        return np.concatenate(whole + [rng.choice(pool, rest, replace=False)])

    def epoch_indices(self) -> List[int]:
        """The whole epoch's draw (all ranks), B x C shuffled indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        kept = self._capped(rng)
        kept_labels = self.labels[kept]
        parts = []
        for c in self.classes_present:
            pool = kept[kept_labels == c]
            if not len(pool) and self.repeat:
                pool = self._by_class[c]
            parts.append(self._take(pool, rng, self._counts[c], self._by_class[c]))
        draw = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return rng.permutation(draw).tolist()

    def __iter__(self) -> Iterator[int]:
        draw = self.epoch_indices()
        total = self.num_samples * self.world_size
        if draw and total > len(draw):  # pad by repeating the head, as DistributedSampler
            draw = (draw * (-(-total // len(draw))))[:total]
        return iter(draw[self.rank:total:self.world_size])

    def __len__(self) -> int:
        return self.num_samples
