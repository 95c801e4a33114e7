"""The Python API, `dhgen.render`: what it accepts (manifest path, dicts, Jobs), what it refuses before anything
starts, and real scripts run as a user runs them: the README's example, and one without the `__main__` guard."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import pytest
from conftest import FIXTURES, write_clip

import dhgen
from dhgen.errors import UsageError
from dhgen.executors.inprocess import InProcessExecutor
from dhgen.options import FaceOptions, ModelOptions, RenderOptions

README = Path(__file__).parent.parent / "README.md"
PORTRAIT = FIXTURES / "portrait.png"


@pytest.fixture
def options(tmp_path) -> RenderOptions:
    return RenderOptions(face=FaceOptions(cache_dir=tmp_path / "cache"), model=ModelOptions(device="cpu"))


def frames_in(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_a_list_of_dicts_renders_like_a_manifest(tmp_path, options, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_clip(tmp_path / "in" / "hello.wav", 0.4)
    jobs = [
        {"id": "first", "audio": "in/hello.wav", "avatar": PORTRAIT},  # relative to the current folder; a Path too
        {"audio": Path("in/hello.wav"), "avatar": str(PORTRAIT), "output": "sub/second.mp4"},
    ]
    summary = dhgen.render(jobs, options, out_dir="out", executor=InProcessExecutor(options))
    assert summary.exit_code == 0
    assert [(r.job_id, r.status) for r in summary.records] == [("first", "succeeded"), ("hello", "succeeded")]
    assert frames_in(tmp_path / "out" / "first.mp4") == 10 and frames_in(tmp_path / "out" / "sub" / "second.mp4") == 10
    logged = [json.loads(line)["job_id"] for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert logged == ["first", "hello"]


def test_a_manifest_path_and_a_list_of_jobs_render_too(tmp_path, options):
    audio = write_clip(tmp_path / "a.wav", 0.4)
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(f"id,audio,avatar\nm,a.wav,{PORTRAIT}\n")
    out = tmp_path / "out"
    by_path = dhgen.render(manifest, options, out_dir=out, executor=InProcessExecutor(options))
    by_str = dhgen.render(str(manifest), options, out_dir=out, executor=InProcessExecutor(options))
    jobs = [dhgen.Job("j", audio, PORTRAIT, out / "j.mp4")]
    by_jobs = dhgen.render(jobs, options, out_dir=out, executor=InProcessExecutor(options))
    assert [s.records[0].status for s in (by_path, by_str, by_jobs)] == ["succeeded"] * 3
    assert frames_in(out / "m.mp4") == 10 and frames_in(out / "j.mp4") == 10


@pytest.mark.parametrize(
    ("jobs", "words"),
    [
        (42, "got int"),
        (b"jobs.csv", "got bytes"),
        ({"audio": "a.wav", "avatar": "v.mp4"}, "got one dict (put it in a list"),
        (["a.wav", "v.mp4"], "got a list of str"),
        ([{"audio": "a.wav", "avatar": "v.mp4"}, dhgen.Job("j", Path("a"), Path("v"), Path("j.mp4"))], "Job, dict"),
        ([{"audio": 3, "avatar": "v.mp4"}], "jobs[0]['audio'] must be a str or os.PathLike, got int"),
    ],
)
def test_a_wrong_type_is_a_type_error_before_anything_is_made(tmp_path, jobs, words):
    out = tmp_path / "out"
    with pytest.raises(TypeError) as info:
        dhgen.render(jobs, out_dir=out)
    assert words in str(info.value)
    if "must be a str" not in words:
        assert "manifest path (str or os.PathLike)" in str(info.value) and "list of dhgen.Job" in str(info.value)
    assert not out.exists()  # no lock, no log, no folder


def test_bad_job_dicts_are_usage_errors_naming_the_item(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UsageError) as info:
        dhgen.render([{"audio": "a.wav", "avatar": "v.mp4"}, {"audio": "b.wav"}], out_dir=out)
    assert info.value.message.startswith("jobs:2:") and "'avatar'" in info.value.message
    with pytest.raises(UsageError, match="unknown column 'mood'"):
        dhgen.render([{"audio": "a.wav", "avatar": "v.mp4", "mood": "calm"}], out_dir=out)
    with pytest.raises(UsageError, match="is not a preset of libx264"):
        dhgen.render([], dhgen.RenderOptions(encode=dhgen.EncodeOptions(preset="quick")), out_dir=out)
    assert not out.exists()


def _python_block(section: str) -> str:
    text = README.read_text(encoding="utf-8")
    body = text[text.index(f"## {section}") :]
    return re.search(r"```python\n(.*?)```", body, re.DOTALL).group(1)


def _demo_inputs(root: Path) -> None:
    """The README example's inputs, short: examples/ with clips under the demo's names."""
    examples = root / "examples"
    write_clip(examples / "hello.wav", 0.6)
    write_clip(examples / "news.wav", 0.4, start=1.0)
    os.symlink(FIXTURES / "avatar.mp4", examples / "presenter.mp4")
    os.symlink(PORTRAIT, examples / "portrait.jpg")


def run_script(root: Path, code: str) -> subprocess.CompletedProcess:
    script = root / "script.py"
    script.write_text(code, encoding="utf-8")
    return subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=120)


def test_the_readme_example_runs_as_written(tmp_path):
    _demo_inputs(tmp_path)
    done = run_script(tmp_path, _python_block("Python API"))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "renders" / "api"
    assert sorted(done.stdout.splitlines()) == [  # in the order they finished
        f"news: succeeded: {(out / 'news.mp4').resolve()}",
        f"welcome: succeeded: {(out / 'welcome.mp4').resolve()}",
    ]
    assert frames_in(out / "welcome.mp4") == 15 and frames_in(out / "news.mp4") == 10
    assert "dhgen" in done.stderr and "2/2" in done.stderr  # the tqdm bar


def test_a_script_without_the_main_guard_fails_once_saying_so(tmp_path):
    _demo_inputs(tmp_path)
    example = _python_block("Python API")
    unguarded = example.replace('if __name__ == "__main__":\n    sys.exit(main())', "sys.exit(main())")
    assert unguarded != example
    done = run_script(tmp_path, unguarded)
    assert done.returncode == 1
    assert done.stderr.count("dhgen.errors.UsageError:") == 1, done.stderr
    assert done.stderr.count('no `if __name__ == "__main__":` guard') == 1
    for symptom in ("JobProcessCrashed", "WorkerCrashed", "dmesg", "OOM", "bootstrapping phase", "RunLocked"):
        assert symptom not in done.stderr, symptom
    out = tmp_path / "renders" / "api"
    assert not (out / "results.jsonl").exists() and not list(out.glob("*.mp4"))  # no record, no output
