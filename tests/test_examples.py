"""The scheduler examples, where no real scheduler can check them: what the Slurm recipe asks a GPU cluster for
(recorded by a stand-in `sbatch`; tests/test_slurm.py runs the recipe on a real Slurm), and that the Kubernetes
Indexed Job gives dhgen the same shard count it asks Kubernetes for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"
DHGEN = Path(sys.executable).with_name("dhgen")

RECORDING_SBATCH = """\
#!{python}
# Records how submit.sh calls sbatch (arguments and the variables the jobs get) and starts nothing: the requests a
# GPU cluster gets (GPUs, a partition, the default 16 CPUs and 64G) cannot be submitted to the test suite's Slurm.
import json, os, sys

with open(os.environ["SBATCH_CALLS"], "a") as calls:
    env = {{k: os.environ.get(k) for k in ("DHGEN", "MANIFEST", "OUT", "DEVICE", "JOBS")}}
    calls.write(json.dumps({{"args": sys.argv[1:], "env": env}}) + "\\n")
print("123;cluster" if "--wrap" not in sys.argv else "124")
"""


def submit_recorded(tmp_path: Path, *args: str, **variables: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(RECORDING_SBATCH.format(python=sys.executable))
    (bin_dir / "sbatch").chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    calls.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_CALLS": str(calls), **variables}
    done = subprocess.run(
        ["bash", EXAMPLES / "slurm" / "submit.sh", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def test_the_slurm_recipe_asks_a_gpu_cluster_for_what_the_variables_say(tmp_path):
    out = tmp_path / "renders"
    required = {"DHGEN": str(DHGEN), "MANIFEST": "jobs.csv", "OUT": str(out)}
    done, [array, report] = submit_recorded(tmp_path, "--qos=low", **required, GPUS="2", PARTITION="gpu")
    assert done.returncode == 0, done.stderr
    assert array["args"] == [
        "--parsable",
        "--partition=gpu",
        "--cpus-per-task=16",  # the documented defaults
        "--mem=64G",
        "--time=04:00:00",
        "--gres=gpu:2",
        f"--output={out}/slurm/dhgen-%A_%a.out",
        "--qos=low",  # arguments reach the array's sbatch as they are
        str(EXAMPLES / "slurm" / "dhgen-array.sbatch"),
    ]
    assert array["env"] == {**required, "DEVICE": "cuda", "JOBS": "8"}
    assert "--partition=gpu" in report["args"] and "--dependency=afterany:123" in report["args"]
    assert "--cpus-per-task=1" in report["args"] and "--mem=1G" in report["args"]
    assert not [a for a in report["args"] if a.startswith("--gres") or a == "--qos=low"]
    assert (out / "slurm").is_dir()  # sbatch would not create it; a task without it fails at once

    done, [array, _] = submit_recorded(tmp_path, **required, GPUS="0")
    assert not [a for a in array["args"] if a.startswith(("--gres", "--partition"))]
    assert array["env"]["DEVICE"] == "cpu"


def test_the_slurm_recipe_names_a_missing_dhgen_before_submitting(tmp_path):
    done, calls = submit_recorded(tmp_path, DHGEN=str(tmp_path / "nowhere" / "dhgen"), MANIFEST="m.csv", OUT="out")
    assert done.returncode == 2 and "DHGEN" in done.stderr and calls == []
    script = subprocess.run(
        ["bash", EXAMPLES / "slurm" / "dhgen-array.sbatch"],
        env={**os.environ, "DHGEN": "no-such-dhgen", "MANIFEST": "m.csv", "OUT": "out"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert script.returncode == 2 and "DHGEN=no-such-dhgen is not a command" in script.stderr


def test_the_kubernetes_example_asks_for_as_many_pods_as_it_tells_dhgen():
    text = (EXAMPLES / "kubernetes" / "dhgen-indexed-job.yaml").read_text()

    def field(name: str) -> str:
        return re.search(rf"^\s*{name}: *(\S+)", text, re.MULTILINE).group(1)

    assert field("completionMode") == "Indexed"
    count = re.search(r'name: DHGEN_SHARD_COUNT\s+value: "(\d+)"', text).group(1)
    assert field("completions") == field("parallelism") == count == "4"
    flow = re.search(r"command: (\[.*?\])", text, re.DOTALL).group(1)
    command = json.loads(flow)  # a YAML flow sequence of quoted strings is JSON
    assert command[:2] == ["dhgen", "render"]
    assert command[command.index("--shard") + 1] == "auto" and "--resume" in command
    assert field("restartPolicy") == "Never"  # podFailurePolicy needs it
    help_text = subprocess.run([DHGEN, "render", "--help"], capture_output=True, text=True, timeout=60).stdout
    for option in (arg for arg in command if arg.startswith("--")):
        assert option in help_text, option
