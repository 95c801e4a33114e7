"""Are renders reproducible? Each succeeded record's `frames_digest` (the frames as handed to the encoder, see
`dhgen.writer`) compared with another result log's, or with a fresh render of the same jobs.

    from dhgen.verify import compare_logs, verify_by_rerender
    result = compare_logs("night1/results.jsonl", "night2/results.jsonl")
    result = verify_by_rerender("renders/results.jsonl", read_manifest("jobs.csv", Path("renders")), options)
    if not result.ok:
        print("\n".join(result.lines()))

The same inputs and options give the same digest whatever the encoder, its threads, the executor, or a crash and
replay on the way; a mismatch means the frames themselves changed (another dhgen or model version, another
checkpoint, a model that is not deterministic on this device). `dhgen render --resume --verify` does the re-render
check on the run's own log (`dhgen.runner`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dhgen.results import last_records

MATCH, MISMATCH, MISSING = "match", "mismatch", "missing"


@dataclass(frozen=True)
class DigestCheck:
    job_id: str
    outcome: str  # match | mismatch | missing (one side has no succeeded record with a digest)
    expected: str | None
    actual: str | None


@dataclass(frozen=True)
class Verification:
    checks: tuple[DigestCheck, ...]

    def of(self, outcome: str) -> list[DigestCheck]:
        return [c for c in self.checks if c.outcome == outcome]

    @property
    def ok(self) -> bool:
        """Every job compared, and every digest matched."""
        return all(c.outcome == MATCH for c in self.checks)

    def lines(self) -> list[str]:
        """A line per job that did not match, then the counts."""
        out = [
            f"{c.job_id}: {c.outcome} (expected {c.expected or '-'}, got {c.actual or '-'})"
            for c in self.checks
            if c.outcome != MATCH
        ]
        counts = ", ".join(f"{len(self.of(o))} {o}" for o in (MATCH, MISMATCH, MISSING))
        return [*out, f"frames_digest: {counts}"]


def digest_of(record: Mapping | None) -> str | None:
    """The frames digest a record vouches for: a succeeded (or skipped, which carries it on) record's."""
    if record is None or record.get("status") not in ("succeeded", "skipped"):
        return None
    return record.get("frames_digest")


def check(job_id: str, expected: str | None, actual: str | None) -> DigestCheck:
    if expected is None or actual is None:
        return DigestCheck(job_id, MISSING, expected, actual)
    return DigestCheck(job_id, MATCH if expected == actual else MISMATCH, expected, actual)


def compare_records(expected: Mapping[str, Mapping], actual: Mapping[str, Mapping]) -> Verification:
    """Each job id of `expected` (records by job id, as `last_records` reads them) against `actual`'s record."""
    return Verification(
        tuple(check(job_id, digest_of(record), digest_of(actual.get(job_id))) for job_id, record in expected.items())
    )


def compare_logs(expected_log: str | Path, actual_log: str | Path) -> Verification:
    """The last record of each job in `expected_log` against the last one in `actual_log`."""
    return compare_records(last_records(Path(expected_log)), last_records(Path(actual_log)))


def verify_by_rerender(log: str | Path, jobs: Iterable, options=None, run=None, executor=None) -> Verification:
    """Render again, into a temporary folder deleted afterwards, each of `jobs` whose last record in `log` has a
    digest, with `options` (those the log was made with, or the fingerprints will not say so) and `run` (jobs,
    workers...; its folders are replaced), and compare digests. Jobs without a digest in the log are `missing`."""
    from dhgen.options import RunOptions
    from dhgen.runner import render

    expected = last_records(Path(log))
    jobs = list(jobs)
    to_render = [job for job in jobs if digest_of(expected.get(job.id))]
    with tempfile.TemporaryDirectory(prefix="dhgen-verify-") as tmp:
        folder = Path(tmp)
        moved = [dataclasses.replace(job, output=folder / f"{i}.mp4") for i, job in enumerate(to_render)]
        rerun = dataclasses.replace(run or RunOptions(), out_dir=folder, log_path=None, resume=False, verify=False)
        summary = render(moved, options, rerun, executor=executor) if moved else None
    actual = {r.job_id: dataclasses.asdict(r) for r in (summary.records if summary else [])}
    return Verification(
        tuple(check(job.id, digest_of(expected.get(job.id)), digest_of(actual.get(job.id))) for job in jobs)
    )
