"""Ray's exceptions become dhgen's typed records (the mapping table of dhgen.executors.raycluster.failures), with
the node and the process named; never a raw Ray traceback. Real Ray exception classes, built as Ray builds them."""

from __future__ import annotations

import ray.exceptions as rex

from dhgen.errors import AudioDecodeError
from dhgen.executors.raycluster.cluster import NodeInfo, is_loopback
from dhgen.executors.raycluster.failures import actor_died, job_failure

NODE = NodeInfo(node_id="ab12cd34" + "0" * 48, ip="10.1.2.3", cpus=8, gpus=1, alive=True)


def test_a_dead_worker_process_is_a_retryable_job_process_crash_naming_pid_and_node():
    record = job_failure(rex.WorkerCrashedError(), "j1", NODE, 4242)
    assert record["type"] == "JobProcessCrashed" and record["retryable"] and record["hint"]
    assert "pid 4242" in record["message"] and "10.1.2.3 (ab12cd34)" in record["message"] and "j1" in record["message"]
    assert record["pid"] == 4242 and record["node"] == "10.1.2.3" and record["node_id"] == NODE.node_id
    assert record["signal"] is None and "no exit code or signal" in record["message"]


def test_a_dead_or_vanished_node_is_node_lost_naming_ip_and_ray_node_id():
    for exc in (
        rex.NodeDiedError("Task failed because the node it was running on is dead or unavailable."),
        rex.TaskUnschedulableError("The node specified via NodeAffinitySchedulingStrategy doesn't exist any more"),
        rex.LocalRayletDiedError(),
    ):
        record = job_failure(exc, "j2", NODE, None)
        assert record["type"] == "NodeLost" and record["retryable"], type(exc)
        assert "10.1.2.3" in record["message"] and NODE.node_id in record["message"] and "j2" in record["message"]


def test_a_task_killed_by_rays_memory_monitor_is_out_of_memory():
    record = job_failure(rex.OutOfMemoryError("Task was killed due to the node running low on memory."), "j3", NODE, 7)
    assert record["type"] == "OutOfMemory" and record["retryable"] and "memory monitor" in record["message"]
    assert record["hint"] == "lower --batch-size or run fewer --jobs at once"


def test_our_own_error_raised_remotely_arrives_as_itself():
    cause = AudioDecodeError("cannot decode audio: Invalid data", path="/data/a.wav")
    exc = rex.RayTaskError("run_job", "Traceback (most recent call last): ...", cause, ip="127.0.0.1", pid=1)
    record = job_failure(exc, "j4", NODE, 1)
    assert record == cause.to_record()


def test_an_unexpected_remote_exception_is_a_bug_record_with_the_remote_traceback():
    exc = rex.RayTaskError("run_job", "Traceback: remote frames", KeyError("boom"), ip="127.0.0.1", pid=1)
    record = job_failure(exc, "j5", NODE, 1)
    assert record["type"] == "KeyError" and not record["retryable"] and "bug" in record["hint"]
    assert record["traceback"] == "Traceback: remote frames"


def test_an_actor_death_is_worker_crashed_naming_actor_node_and_pid():
    record = actor_died(3, NODE, 99, rex.ActorUnavailableError("Socket closed", None), "died")
    assert record["type"] == "WorkerCrashed" and record["retryable"]
    assert record["message"].startswith("inference actor 3 on node 10.1.2.3 (ab12cd34) (pid 99) died")
    assert "ActorUnavailableError" in record["message"]


def test_loopback_addresses_are_recognised():
    assert all(map(is_loopback, ["127.0.0.1:6379", "localhost:6379", "ray://127.0.0.1:10001", "[::1]:6379"]))
    assert not any(map(is_loopback, [None, "auto", "10.0.0.5:6379", "ray://head:10001"]))
