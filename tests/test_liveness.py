"""Liveness rules shared by the executors: stalls judged from progress counters, timeouts, progress pacing."""

from __future__ import annotations

from dhgen.liveness import AttemptProgress, Limits

LIMITS = Limits(stall_timeout=10.0, startup_timeout=100.0, job_timeout=None)


def test_before_frames_flow_the_startup_allowance_applies_then_the_stall_timeout():
    progress = AttemptProgress(started=0.0, last_activity=0.0)
    assert LIMITS.attempt_verdict("j", progress, 50.0, waiting=False, where="pid 1") is None  # still starting up
    stalled = LIMITS.attempt_verdict("j", progress, 101.0, waiting=False, where="pid 1")
    assert stalled.type_name == "Stalled" and "preparation" in stalled.message and "(pid 1)" in stalled.message

    progress.count("total", 100, 101.0)
    progress.count("decoded", 16, 102.0)  # frames flow: now 10 s without progress is a stall
    assert LIMITS.attempt_verdict("j", progress, 111.0, waiting=False, where="pid 1") is None
    stalled = LIMITS.attempt_verdict("j", progress, 112.5, waiting=False, where="pid 1")
    assert "decoding made no progress for 10s" in stalled.message


def test_an_attempt_waiting_on_the_model_is_not_stalled_but_can_time_out():
    progress = AttemptProgress(started=0.0, last_activity=0.0)
    progress.count("decoded", 16, 1.0)
    assert LIMITS.attempt_verdict("j", progress, 500.0, waiting=True, where="pid 1") is None
    limits = Limits(stall_timeout=10.0, startup_timeout=100.0, job_timeout=30.0)
    timeout = limits.attempt_verdict("j", progress, 31.0, waiting=True, where="pid 1")
    assert timeout.type_name == "JobTimeout" and "30s" in timeout.message


def test_a_worker_is_stalled_only_while_it_holds_work_or_has_not_loaded():
    assert not LIMITS.worker_stalled(now=50.0, last_progress=0.0, ready=True, waiting=False)
    assert LIMITS.worker_stalled(now=11.0, last_progress=0.0, ready=True, waiting=True)
    assert not LIMITS.worker_stalled(now=50.0, last_progress=0.0, ready=False, waiting=False)  # still loading
    assert LIMITS.worker_stalled(now=101.0, last_progress=0.0, ready=False, waiting=False)


def test_progress_events_on_each_new_stage_else_once_a_second():
    progress = AttemptProgress(started=0.0, last_activity=0.0)
    assert progress.count("total", 100, 0.1) and progress.event_due(0.1, force=True)
    progress.count("decoded", 16, 0.2)
    assert not progress.count("decoded", 32, 0.3) and not progress.event_due(0.3, force=False)
    assert progress.event_due(1.2, force=False)
    progress.count("encoded", 100, 2.0)
    progress.count("total", 100, 2.0)
    assert progress.event_due(2.01, force=False)  # the last frame is encoded: always reported
    assert progress.fps(2.0) == 50.0
