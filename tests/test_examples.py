"""The scheduler examples: the Slurm array (run here with a stand-in `sbatch` that starts the array's tasks as
Slurm would, with Slurm's variables) renders a batch in 4 shards and reports on it; the Kubernetes Indexed Job
gives dhgen the same shard count it asks Kubernetes for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import FIXTURES, write_clip

from dhgen.shards import shard_of

EXAMPLES = Path(__file__).parent.parent / "examples"
DHGEN = Path(sys.executable).with_name("dhgen")

FAKE_SBATCH = """\
#!{python}
# Stands in for Slurm's sbatch on a machine without Slurm: an --array script's tasks run at once, here, with
# the variables Slurm gives them; a --wrap job runs after them (as --dependency=afterany would have it).
import os, re, subprocess, sys

args = sys.argv[1:]
with open(os.environ["FAKE_SBATCH_LOG"], "a") as log:
    if "--wrap" in args:
        code = subprocess.run(["sh", "-c", args[args.index("--wrap") + 1]]).returncode
        log.write(f"wrap exit {{code}}\\n")
        print("Submitted batch job 124")
        sys.exit(0)
    script = args[-1]
    low, high = map(int, re.search(r"^#SBATCH --array=(\\d+)-(\\d+)$", open(script).read(), re.M).groups())
    tasks = [
        subprocess.Popen(
            ["bash", script],
            env={{**os.environ, "SLURM_ARRAY_JOB_ID": "123", "SLURM_ARRAY_TASK_ID": str(k),
                  "SLURM_ARRAY_TASK_COUNT": str(high - low + 1), "SLURM_ARRAY_TASK_MIN": str(low),
                  "SLURM_ARRAY_TASK_MAX": str(high), "SLURM_ARRAY_TASK_STEP": "1"}},
        )
        for k in range(low, high + 1)
    ]
    log.write(f"array exits {{[t.wait() for t in tasks]}}\\n")
print("123" if "--parsable" in args else "Submitted batch job 123")
"""


def test_the_slurm_example_renders_a_batch_in_4_shards_and_reports_it(tmp_path):
    candidates = [f"clip{i}" for i in range(40)]
    ids = [next(i for i in candidates if shard_of(i, 4) == k) for k in (1, 3)]  # shards 0 and 2 have no job
    audio = write_clip(tmp_path / "in" / "a.wav", 0.4)
    manifest = tmp_path / "in" / "nightly.csv"
    manifest.write_text("id,audio,avatar\n" + "".join(f"{i},{audio},{FIXTURES / 'portrait.png'}\n" for i in ids))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable))
    (bin_dir / "sbatch").chmod(0o755)
    out, log = tmp_path / "shared" / "renders", tmp_path / "sbatch.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_SBATCH_LOG": str(log),
        "DHGEN": str(DHGEN),
        "MANIFEST": str(manifest),
        "OUT": str(out),
        "DEVICE": "cpu",
        "JOBS": "1",
    }
    submitted = subprocess.run(
        ["bash", EXAMPLES / "slurm" / "submit.sh"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert submitted.returncode == 0, submitted.stderr
    assert log.read_text().splitlines() == ["array exits [0, 0, 0, 0]", "wrap exit 0"]
    assert sorted(p.name for p in out.glob(".dhgen.shard-*.lock")) == [f".dhgen.shard-{k}-of-4.lock" for k in range(4)]
    assert sorted(p.name for p in out.glob("results*.jsonl")) == [f"results.shard-{k}-of-4.jsonl" for k in (1, 3)]
    assert all((out / f"{i}.mp4").is_file() for i in ids)
    assert not (out / "failed.csv").exists()  # nothing failed, nothing to render again
    report = subprocess.run(
        [DHGEN, "report", out, "--manifest", manifest, "--json"], capture_output=True, text=True, timeout=60
    )
    assert report.returncode == 0 and json.loads(report.stdout)["counts"]["succeeded"] == 2


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


def test_the_slurm_array_size_and_the_example_agree():
    script = (EXAMPLES / "slurm" / "dhgen-array.sbatch").read_text()
    assert "#SBATCH --array=0-3" in script and "--shard auto" in script
    assert textwrap.dedent(script).startswith("#!/bin/bash")
