"""What face tracking costs: CPU ms per avatar frame of `dhgen.face.track_faces` with an empty cache, and how many
frames it examined (frontal cascade) and passed to the profile cascade.

    .venv/bin/python tools/face_cost.py [--reps 5] [AVATAR ...]

Without AVATAR: the fixtures carphone.mp4 (real footage, two short misses), avatar.mp4, two_faces_moving.mp4 and
turning.mp4 (a head turned away for 20 frames), plus the 854x480 3-second avatar `make bench` renders. CPU time is
the process's user+sys (OpenCV's threads included), so the numbers hold on a busy machine; each row is the median of
`--reps` runs. To compare with another checkout, run this file with that checkout first on PYTHONPATH
(`PYTHONPATH=/path/to/other .venv/bin/python tools/face_cost.py`): it uses only `track_faces` and `cascade_faces`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dhgen.face
from dhgen.avatar import probe_avatar
from dhgen.face import track_faces
from dhgen.options import FaceOptions

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
DEFAULT = ("carphone.mp4", "avatar.mp4", "two_faces_moving.mp4", "turning.mp4")


class CascadeCalls:
    """Counts `cascade_faces` calls per cascade: the first cascade seen is the frontal one."""

    def __init__(self) -> None:
        self.by_cascade: dict[int, int] = {}
        self._real = dhgen.face.cascade_faces

    def __call__(self, cascade, *args):
        self.by_cascade[id(cascade)] = self.by_cascade.get(id(cascade), 0) + 1
        return self._real(cascade, *args)

    def counts(self) -> tuple[int, int]:
        """(frontal calls, profile passes); a profile pass looks at the frame and its mirror image."""
        calls = list(self.by_cascade.values())
        return (calls[0] if calls else 0), sum(calls[1:]) // 2


def measure(avatar: Path, reps: int) -> dict:
    info = probe_avatar(avatar)
    cpu, wall, counts = [], [], (0, 0)
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as cache:
            calls = CascadeCalls()
            dhgen.face.cascade_faces = calls
            try:
                start_cpu, start = time.process_time(), time.perf_counter()
                track_faces(info, info.n_frames, FaceOptions(cache_dir=Path(cache)))
                cpu.append(time.process_time() - start_cpu)
                wall.append(time.perf_counter() - start)
            finally:
                dhgen.face.cascade_faces = calls._real
            counts = calls.counts()
    n = info.n_frames
    return {
        "avatar": avatar.name,
        "size": f"{info.width}x{info.height}",
        "frames": n,
        "cpu_ms": 1000 * statistics.median(cpu) / n,
        "wall_ms": 1000 * statistics.median(wall) / n,
        "examined": counts[0],
        "profile": counts[1],
    }


def bench_avatar(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import make_avatar

    return make_avatar(folder / "bench-480p.mp4", 854, 480)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("avatars", nargs="*", type=Path)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        avatars = args.avatars or [FIXTURES / name for name in DEFAULT] + [bench_avatar(Path(tmp))]
        out = sys.stdout
        out.write(f"dhgen from {Path(dhgen.__file__).parent}\n")
        out.write(
            f"{'avatar':<22} {'size':>8} {'frames':>6} {'cpu ms/frame':>12} {'wall ms/frame':>13} examined profile\n"
        )
        for avatar in avatars:
            if not avatar.exists():
                out.write(f"{avatar.name:<22} missing\n")
                continue
            row = measure(avatar, args.reps)
            out.write(
                f"{row['avatar']:<22} {row['size']:>8} {row['frames']:>6} {row['cpu_ms']:>12.2f} "
                f"{row['wall_ms']:>13.2f} {row['examined']:>8} {row['profile']:>7}\n"
            )
            out.flush()


if __name__ == "__main__":
    main()
