"""Expression over time: a video run of `grefel predict --out R` also writes `R`'s stem +
`.expressions.png`, the probability of each class per frame of the face followed longest (its
track), with gaps where it was not found. What a deployment engineer looks at first when a
clip's labels flicker or drift. Torch-free (matplotlib's Figure, no pyplot state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from grefel.fileio import atomic_path

__all__ = ["Timeline", "plot_path"]

SUFFIX = ".expressions.png"


def plot_path(out: Path) -> Path:
    """Where the plot of a run whose records go to `out` is written: beside them."""
    return Path(out).with_name(Path(out).stem + SUFFIX)


class Timeline:
    """Collects the records of each frame (`add`) and plots the longest track (`save`)."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.fps = 0.0
        self.last_frame = -1
        self.tracks: Dict[Any, List[Tuple[int, List[float]]]] = {}

    def add(self, frame: int, records: Sequence[Dict[str, Any]], fps: float = 0.0) -> None:
        """The records of one frame (`grefel predict`'s, contract.md): faces with their probs."""
        self.fps = self.fps or float(fps or 0.0)
        self.last_frame = max(self.last_frame, frame)
        for rec in records:
            if rec.get("face") and rec.get("probs"):
                key = rec["track"] if rec.get("track") is not None else 0
                row = [float(rec["probs"][c]) for c in self.classes]
                self.tracks.setdefault(key, []).append((frame, row))

    def main_track(self) -> Optional[Any]:
        """The track seen in the most frames (the first such), None when no face was found."""
        if not self.tracks:
            return None
        return max(self.tracks, key=lambda k: len(self.tracks[k]))

    def save(self, path: Path, title: str = "") -> bool:
        """Write the PNG atomically (`grefel.fileio.atomic_path`); False when no face was found."""
        track = self.main_track()
        if track is None:
            return False
        import numpy as np
        from matplotlib.figure import Figure

        n = self.last_frame + 1
        probs = np.full((n, len(self.classes)), np.nan)
        for frame, row in self.tracks[track]:
            probs[frame] = row
        scale = 1.0 / self.fps if self.fps > 0 else 1.0
        t = np.arange(n) * scale
        fig = Figure(figsize=(10, 4), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        for i, name in enumerate(self.classes):
            ax.plot(t, probs[:, i], label=name, linewidth=1.2)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("seconds" if self.fps > 0 else "frame")
        ax.set_ylabel("probability")
        seen = len(self.tracks[track])
        ax.set_title(f"{title}: expression over time, track {track} ({seen} of {n} frames; "
                     "gaps: not found)" if title else f"track {track}")
        ax.legend(loc="upper right", fontsize=8, ncol=2)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        return True
