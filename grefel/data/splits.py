"""Identity-disjoint splits stratified by class: every image of one person in one split.

    assignment = stratified_group_split(groups, num_classes=8, seed=0)   # {group: "train" ...}

A plain hash of the identity gives every *identity* an 80 / 10 / 10 chance, not every *class*
80 / 10 / 10 of its images: in a set where one person holds half of a class's images (104 of the
208 disgust images of muxspace/facial_expressions) or a class has 21 images of 16 people, a hash
leaves a split without the class or with most of it. `stratified_group_split` assigns whole
groups greedily, rarest classes first:

1. Groups are ordered by the total of the rarest class they hold (ascending), then by how many
   images of that class they hold (descending: big chunks are placed while there is room), then
   by their size (descending), then by sha256(seed:group) (a fixed order on every machine; no
   Python hash, no random generator).
2. Each group goes to the split where it brings the class counts closest to their targets:
   the split s that most lowers sum_c ((held(s, c) - target(s, c)) / target(s, c))^2, with
   target(s, c) = fraction_s * total_c (the relative error, so that the small splits' shares
   of a rare class count as much as the large split's). Ties go to the largest split.
3. A group larger than `max_share` (15 %) of a smaller split's expected size, and larger than
   MIN_CAP images, may only go to the largest split (train): without this rule the greedy fills
   a held-out split with a few large identities (one person was 37 % of the test split of
   muxspace/facial_expressions).
4. Then, in the same order, a group moves to another allowed split wherever that lowers the
   error, until no move does (at most REFINE_PASSES passes): the greedy pass overfills the
   small splits with the minority images of groups placed for a rarer class.

Small groups are placed first within a class: the held-out splits fill with many identities
and the large ones go to train (on muxspace: about 350 identities in each of val and test).

The result depends only on the groups, their class counts, the fractions and the seed: the same
on every machine and Python version. Pure Python, torch-free.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Mapping, Sequence, Tuple

__all__ = ["FRACTIONS", "MAX_SHARE", "SPLITS", "split_counts", "stratified_group_split"]

SPLITS = ("train", "val", "test")
FRACTIONS = (0.8, 0.1, 0.1)
MAX_SHARE = 0.15  # one identity makes up at most 15 % of val or test ...
MIN_CAP = 20  # ... unless it has at most this many images (a small set: every group would be)
REFINE_PASSES = 10


def _tie(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def stratified_group_split(
    groups: Mapping[str, Sequence[int]],
    *,
    fractions: Sequence[float] = FRACTIONS,
    seed: int = 0,
    max_share: float = MAX_SHARE,
) -> Dict[str, str]:
    """{group: split name} for `groups` = {group: per-class image counts} (module docstring).

    fractions: the wanted share of each class per split, in SPLITS order (sums to 1).
    max_share: the largest part of a smaller split's expected size that one group may make up;
        a bigger group goes to the largest split.
    """
    if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be {len(SPLITS)} shares summing to 1, got {fractions}")
    if not groups:
        return {}
    num_classes = len(next(iter(groups.values())))
    totals = [0] * num_classes
    for counts in groups.values():
        if len(counts) != num_classes:
            raise ValueError("every group needs one count per class")
        for c, n in enumerate(counts):
            totals[c] += n
    held = [[0] * num_classes for _ in SPLITS]
    targets = [[f * t for t in totals] for f in fractions]
    preference = sorted(range(len(SPLITS)), key=lambda s: -fractions[s])  # ties: largest share
    images = sum(totals)

    def order(group: str) -> Tuple[int, int, str]:
        counts = groups[group]
        present = [c for c, n in enumerate(counts) if n]
        if not present:
            return (0, 0, _tie(seed, group))
        rarest = min(present, key=lambda c: (totals[c], c))
        return (totals[rarest], sum(counts), _tie(seed, group))

    def change(s: int, counts: Sequence[int], sign: int = 1) -> float:
        """How much adding (sign 1) or removing (-1) a group changes split s's part of
        sum_c ((held - target) / target)^2."""
        total = 0.0
        for c, n in enumerate(counts):
            if n:
                target, off = targets[s][c], held[s][c] - targets[s][c]
                total += ((off + sign * n) ** 2 - off * off) / (target * target)
        return total

    def move(s: int, counts: Sequence[int], sign: int) -> None:
        for c, n in enumerate(counts):
            held[s][c] += sign * n

    ordered = sorted(groups, key=order)
    allowed = {g: [s for s in preference if s == preference[0]
                   or sum(groups[g]) <= max(max_share * fractions[s] * images, MIN_CAP)]
               for g in ordered}
    where: Dict[str, int] = {}
    for group in ordered:  # step 2: greedy placement
        counts = groups[group]
        where[group] = min(allowed[group], key=lambda s: (change(s, counts), preference.index(s)))
        move(where[group], counts, 1)
    for _ in range(REFINE_PASSES):  # step 4: move single groups while that lowers the error
        moved = False
        for group in ordered:
            counts, here = groups[group], where[group]
            others = [s for s in allowed[group] if s != here]
            if not others:
                continue
            leave = change(here, counts, -1)
            gain, _, best = min((leave + change(s, counts), preference.index(s), s)
                                for s in others)
            if gain < -1e-12:
                move(here, counts, -1)
                move(best, counts, 1)
                where[group], moved = best, True
        if not moved:
            break
    return {g: SPLITS[s] for g, s in where.items()}


def split_counts(
    labels_and_groups: Sequence[Tuple[int, str]], assignment: Mapping[str, str], num_classes: int
) -> Dict[str, List[int]]:
    """{split: images per class} of (label, group) pairs under `assignment`."""
    out = {s: [0] * num_classes for s in SPLITS}
    for label, group in labels_and_groups:
        out[assignment[group]][label] += 1
    return out
