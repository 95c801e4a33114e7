"""Manifests: CSV and JSON Lines, paths relative to the manifest, unique ids, outputs kept inside the folder."""

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from dhgen.errors import ManifestError, UsageError
from dhgen.manifest import Job, read_manifest, single_job, write_manifest
from dhgen.options import JobSettings


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *rows: dict) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def test_csv_paths_are_relative_to_the_manifest(tmp_path):
    manifest = write(tmp_path / "batch" / "jobs.csv", "id,audio,avatar\nhello,audio/a.wav,faces/v.mp4\n")
    out = tmp_path / "renders"
    [job] = read_manifest(manifest, out)
    assert job == Job(
        id="hello",
        audio=tmp_path / "batch" / "audio" / "a.wav",
        avatar=tmp_path / "batch" / "faces" / "v.mp4",
        output=out.resolve() / "hello.mp4",
    )


def test_absolute_input_paths_are_kept(tmp_path):
    manifest = write(tmp_path / "m.csv", "audio,avatar\n/data/a.wav,/data/v.mp4\n")
    [job] = read_manifest(manifest, tmp_path / "out")
    assert (job.audio, job.avatar) == (Path("/data/a.wav"), Path("/data/v.mp4"))


def test_jsonl_with_output_column(tmp_path):
    manifest = jsonl(
        tmp_path / "m.jsonl",
        {"id": "a", "audio": "a.wav", "avatar": "v.mp4", "output": "speakers/alice.mp4"},
        {"audio": "b.wav", "avatar": "v.mp4"},
    )
    out = tmp_path / "out"
    a, b = read_manifest(manifest, out)
    assert a.output == out.resolve() / "speakers" / "alice.mp4"
    assert (b.id, b.output) == ("b", out.resolve() / "b.mp4")
    assert b.audio == tmp_path / "b.wav"


def test_csv_with_bom_blank_lines_comments_and_quoted_spaces(tmp_path):
    text = '\ufeffid,audio,avatar\n\n# a comment\nx,"my dir/voix d\'été.wav","faces/a b.png"\n'
    [job] = read_manifest(write(tmp_path / "m.csv", text), tmp_path / "out")
    assert job.audio == tmp_path / "my dir" / "voix d'été.wav"
    assert job.avatar == tmp_path / "faces" / "a b.png"


def test_derived_ids_come_from_the_audio_stem_and_are_unique(tmp_path):
    text = "id,audio,avatar\n,x/hello.wav,v.mp4\n,y/hello.wav,v.mp4\nhello-2,z.wav,v.mp4\n,voix d'été.wav,v.mp4\n"
    jobs = read_manifest(write(tmp_path / "m.csv", text), tmp_path / "out")
    ids = [j.id for j in jobs]
    assert ids[0] == "hello" and ids[2] == "hello-2"
    assert ids[1] not in ("hello", "hello-2") and ids[1].startswith("hello")
    assert len(set(ids)) == 4 and len({j.output for j in jobs}) == 4
    for job_id in ids:  # safe as file names
        assert job_id and "/" not in job_id and " " not in job_id and not job_id.startswith(".")


def test_manifest_without_a_suffix_is_sniffed(tmp_path):
    jsonl_text = json.dumps({"audio": "a.wav", "avatar": "v.mp4"}) + "\n"
    assert read_manifest(write(tmp_path / "m1", jsonl_text), tmp_path / "o")[0].id == "a"
    assert read_manifest(write(tmp_path / "m2", "audio,avatar\nb.wav,v.mp4\n"), tmp_path / "o")[0].id == "b"


BAD_CSV = [
    ("id,audio,avatar\na,a.wav\n", 2, "columns"),
    ("id,audio,avatar\na,a.wav,v.mp4\nb,b.wav,v.mp4,extra\n", 3, "columns"),
    ("id,audio,avatar,voice\na,a.wav,v.mp4,x\n", 1, "unknown column 'voice'"),
    ("id,audio\na,a.wav\n", 1, "avatar"),
    ("id,audio,avatar\na,a.wav,v.mp4\na,b.wav,v.mp4\n", 3, "already used on line 2"),
    ("id,audio,avatar\na/b,a.wav,v.mp4\n", 2, "may not use '/'"),
    ("id,audio,avatar\n.hidden,a.wav,v.mp4\n", 2, "may not start or end"),
    ("id,audio,avatar\na b,a.wav,v.mp4\na_b,b.wav,v.mp4\n", 3, "'a_b' already used on line 2"),
    ("id,audio,avatar\na,,v.mp4\n", 2, "'audio' is missing"),
    ("id,audio,avatar,output\na,a.wav,v.mp4,../escape.mp4\n", 2, "outside"),
    ("id,audio,avatar,output\na,a.wav,v.mp4,/tmp/abs.mp4\n", 2, "outside"),
    ("id,audio,avatar,output\na,a.wav,v.mp4,x.mov\n", 2, ".mp4"),
    ("id,audio,avatar,output\na,a.wav,v.mp4,x.mp4\nb,b.wav,v.mp4,x.mp4\n", 3, "also written by line 2"),
]


BAD_JSONL = [
    ('{"audio": "a.wav", "avatar": "v.mp4"}\n{"audio": "b.wav", "avatar": \n', 2, "not valid JSON"),
    ('{"audio": "a.wav", "avatar": "v.mp4"}\n\n["a.wav", "v.mp4"]\n', 3, "JSON object"),
    ('{"audio": "a.wav", "avatar": "v.mp4", "speed": "2"}\n', 1, "unknown column 'speed'"),
    ('{"audio": "a.wav", "avatar": 3}\n', 1, "must be a string"),
    (
        '{"id": "a", "audio": "a.wav", "avatar": "v.mp4"}\n{"id": "a", "audio": "b.wav", "avatar": "v.mp4"}\n',
        2,
        "line 1",
    ),
    ('{"audio": "a.wav", "avatar": "v.mp4", "output": "sub/../../x.mp4"}\n', 1, "outside"),
]


@pytest.mark.parametrize(
    ("suffix", "text", "line", "words"),
    [(".csv", *case) for case in BAD_CSV] + [(".jsonl", *case) for case in BAD_JSONL],
)
def test_malformed_manifest_names_file_and_line(tmp_path, suffix, text, line, words):
    manifest = write(tmp_path / f"m{suffix}", text)
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest, tmp_path / "out")
    assert isinstance(info.value, UsageError)  # the CLI turns it into exit 2
    assert f"{manifest}:{line}:" in info.value.message
    assert words in info.value.message
    assert info.value.hint


def test_output_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "link")
    manifest = write(tmp_path / "m.csv", "id,audio,avatar,output\na,a.wav,v.mp4,link/x.mp4\n")
    with pytest.raises(ManifestError, match=r"m\.csv:2: .*outside"):
        read_manifest(manifest, out)
    os.symlink(elsewhere / "x.mp4", out / "a.mp4")  # the derived output name itself a link out
    manifest = write(tmp_path / "m2.csv", "id,audio,avatar\na,a.wav,v.mp4\n")
    with pytest.raises(ManifestError, match=r"m2\.csv:2: .*outside"):
        read_manifest(manifest, out)


def test_empty_or_unreadable_manifest_is_a_usage_error(tmp_path):
    for text in ("", "id,audio,avatar\n", "\n# only a comment\n"):
        with pytest.raises(ManifestError):
            read_manifest(write(tmp_path / "m.csv", text), tmp_path / "out")
    with pytest.raises(ManifestError, match="nope.csv"):
        read_manifest(tmp_path / "nope.csv", tmp_path / "out")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ManifestError, match="bin.csv"):
        read_manifest(tmp_path / "bin.csv", tmp_path / "out")


def test_single_job_form_uses_the_given_output(tmp_path):
    job = single_job("a.wav", "face.png", tmp_path / "my clip.mp4")
    assert job.output == tmp_path / "my clip.mp4"
    assert job.id and " " not in job.id
    assert (job.audio, job.avatar) == (Path("a.wav"), Path("face.png"))


def test_a_file_is_hashed_once_until_it_changes(tmp_path):
    from dhgen.manifest import _digest, file_digest

    avatar = write(tmp_path / "v.mp4", "first")
    first = file_digest(avatar)
    reads = _digest.cache_info().misses
    assert file_digest(avatar) == first and _digest.cache_info().misses == reads  # remembered, not re-read
    os.utime(avatar, ns=(1, 1))
    avatar.write_text("second")
    assert file_digest(avatar) != first


# --- per-job settings and the user's own columns -------------------------------------------------------------------


def test_per_job_settings_and_x_columns_are_read_from_csv_and_jsonl(tmp_path):
    csv_text = (
        "id,audio,avatar,loop,fps,crf,preset,pads,X_Customer\n"
        "a,a.wav,v.mp4,loop,30,28,Medium,0 12 -2 3,acme\n"
        "b,b.wav,v.mp4,,,,,,\n"
    )
    a, b = read_manifest(write(tmp_path / "m.csv", csv_text), tmp_path / "out")
    assert a.settings == JobSettings(loop="loop", fps=30.0, crf=28, preset="medium", pads=(0, 12, -2, 3))
    assert dict(a.meta) == {"X_Customer": "acme"}  # kept as spelt
    assert b.settings == JobSettings() and dict(b.meta) == {"X_Customer": ""}
    rows = (
        {
            "id": "a",
            "audio": "a.wav",
            "avatar": "v.mp4",
            "fps": 29.97,
            "crf": 18,
            "pads": [1, 2, 3, 4],
            "x_n": {"k": 1},
        },
        {"id": "b", "audio": "b.wav", "avatar": "v.mp4", "crf": None, "preset": "slow", "loop": "pingpong"},
    )
    a, b = read_manifest(jsonl(tmp_path / "m.jsonl", *rows), tmp_path / "out")
    assert a.settings == JobSettings(fps=29.97, crf=18, pads=(1, 2, 3, 4)) and dict(a.meta) == {"x_n": {"k": 1}}
    assert b.settings == JobSettings(preset="slow", loop="pingpong")


def test_face_column_takes_each_choice_in_one_spelling(tmp_path):
    csv_text = 'id,audio,avatar,face\na,a.wav,v.mp4,Left\nb,a.wav,v.mp4,"120, 80"\nc,a.wav,v.mp4,01\nd,a.wav,v.mp4,\n'
    jobs = read_manifest(write(tmp_path / "m.csv", csv_text), tmp_path / "out")
    assert [j.settings.face for j in jobs] == ["left", "120,80", "1", None]  # empty: the command line's --face
    rows = [{"audio": "a.wav", "avatar": "v.mp4", "face": face} for face in (2, [120, 80], "center")]
    jobs = read_manifest(jsonl(tmp_path / "m.jsonl", *rows), tmp_path / "out")
    assert [j.settings.face for j in jobs] == ["2", "120,80", "center"]
    assert jobs[1].settings.given() == {"face": "120,80"}


BAD_SETTINGS = [  # (column, value, what the message says, what the hint says)
    ("crf", "60", "crf '60' is not in 0..51", "0..51"),
    ("crf", "20.5", "crf '20.5' is not a whole number", "0..51"),
    ("fps", "0", "fps '0' is not a frame rate of at least 1", "29.97"),
    ("fps", "fast", "fps 'fast' is not a number", "29.97"),
    ("fps", "nan", "fps 'nan' is not a frame rate of at least 1", "29.97"),
    ("loop", "bounce", "loop 'bounce' is not pingpong or loop", "pingpong"),
    ("preset", "turbo", "preset 'turbo' is not a libx264 preset", "veryfast"),
    ("pads", "0 10 0", "pads '0 10 0' is not four whole numbers (top bottom left right)", "like '0 10 0 0'"),
    ("pads", "0 10 0 x", "pads '0 10 0 x' is not a whole number", "top bottom left right"),
    ("face", "middle", "face 'middle' is not a face choice", "the Nth face from the left"),
    ("face", '"10,-4"', "face '10,-4' is not a pixel x,y (two whole numbers from 0)", 'quote a pixel: "120,80"'),
]


@pytest.mark.parametrize(("column", "value", "message", "hint"), BAD_SETTINGS)
def test_bad_setting_values_name_file_line_and_say_what_is_allowed(tmp_path, column, value, message, hint):
    manifest = write(tmp_path / "jobs.csv", f"id,audio,avatar,{column}\nok,a.wav,v.mp4,\nbad,b.wav,v.mp4,{value}\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest, tmp_path / "out")
    assert info.value.message == f"{manifest}:3: {message}"
    assert hint in info.value.hint


def test_bad_setting_values_in_jsonl(tmp_path):
    for row, message in (
        ({"crf": 60}, "crf 60 is not in 0..51"),
        ({"crf": True}, "crf True is not a whole number"),
        ({"pads": [0, 10]}, "pads [0, 10] is not four whole numbers"),
        ({"loop": 1}, "loop 1 is not pingpong or loop"),
        ({"face": [1, 2, 3]}, "face [1, 2, 3] is not a face choice"),
        ({"face": -1}, "face -1 is not a face choice"),
    ):
        manifest = jsonl(tmp_path / "m.jsonl", {"audio": "a.wav", "avatar": "v.mp4", **row})
        with pytest.raises(ManifestError, match=re.escape(f"m.jsonl:1: {message}")):
            read_manifest(manifest, tmp_path / "out")


def same_files(job: Job) -> Job:
    """The job with its paths resolved (`retry/../batch/a.wav` and `batch/a.wav` are one file)."""
    return dataclasses.replace(job, audio=job.audio.resolve(), avatar=job.avatar.resolve())


def test_written_manifest_reads_back_as_the_same_jobs_from_another_folder(tmp_path):
    text = (
        "id,audio,avatar,output,crf,pads,face,x_customer\n"
        'one,in/a.wav,/abs/face.mp4,sub/one-out.mp4,30,"0 5 0 5","120,80",acme\n'
        "two,in/b b.wav,in/v.mp4,,,,left,\n"
    )
    out = tmp_path / "out"
    jobs = read_manifest(write(tmp_path / "batch" / "jobs.csv", text), out)
    for name in ("retry/failed.csv", "retry/deeper/failed.jsonl", "failed"):
        again = tmp_path / name
        write_manifest(again, jobs, out)
        assert [same_files(j) for j in read_manifest(again, out)] == [same_files(j) for j in jobs], again.read_text()
    written = (tmp_path / "retry" / "failed.csv").read_text()
    assert "../batch/in/a.wav" in written and "/abs/face.mp4" in written  # relative to the new file; absolute kept
    assert "sub/one-out.mp4" in written and "two.mp4" not in written  # default outputs left to the id


# --- each manifest error says what to do about it (exit 2 through the CLI) ---------------------------------------


def render_cli(manifest: Path, out: Path):
    from typer.testing import CliRunner

    from dhgen.cli import app

    return CliRunner().invoke(app, ["render", str(manifest), "--out", str(out)])


MANIFEST_HINTS = [  # (file name, content, line, words in the message, words in its hint)
    ("jobs.csv", b"id;audio;avatar\na;a.wav;v.mp4\n", 1, "separates columns with semicolons", "comma-separated"),
    ("tabs.csv", b"id\taudio\tavatar\na\ta.wav\tv.mp4\n", 1, "with tabs", "comma-separated"),
    ("jobs.csv", b'\n{"audio": "a.wav", "avatar": "v.mp4"}\n', 2, "this is JSON Lines, not CSV", ".jsonl"),
    ("jobs.csv", b"PK\x03\x04\x14\x00\x06\x00binary workbook", 1, "zip archive", "not a media file or workbook"),
    ("jobs.csv", b"id,audio,avatar\na,a.wav,v.mp4\n\x00\x01\x02", 3, "binary data", "not a media file"),
    ("jobs.csv", "id,audio,avatar\na,é.wav,v.mp4\n".encode("latin-1"), 2, "not UTF-8 text (byte 0xe9)", "UTF-8"),
    ("jobs.csv", "id,audio\n".encode("utf-16"), 1, "UTF-16", "UTF-8"),
    ("jobs.csv", b"id,audio,avatar\nok,a.wav,v.mp4\nx/y,b.wav,v.mp4\n", 3, "id 'x/y' may not use '/'", "'x_y'"),
    ("jobs.csv", b"id,audio,avtar\na,a.wav,v.mp4\n", 1, "unknown column 'avtar' (did you mean 'avatar'?)", "x_"),
    ("jobs.jsonl", b'{"audio": "a.wav", "avatar": "v.mp4", "speed": 2}\n', 1, "known columns are id, audio", "x_"),
    ("jobs.csv", b"id,audio,avatar\na,a.wav\n", 2, "expected 3 columns", "double quotes"),
    ("jobs.jsonl", b"audio,avatar\na.wav,v.mp4\n", 1, "not valid JSON", "looks like CSV"),
]


@pytest.mark.parametrize(("name", "content", "line", "words", "hint"), MANIFEST_HINTS)
def test_each_manifest_error_has_its_own_hint(tmp_path, name, content, line, words, hint):
    manifest = tmp_path / name
    manifest.write_bytes(content)
    result = render_cli(manifest, tmp_path / "out")
    assert result.exit_code == 2, result.output
    error, hint_line = result.stderr.strip().splitlines()
    assert error.startswith(f"error: {manifest}:{line}: ") and words in error
    assert hint_line.strip().startswith("hint:") and hint in hint_line
    assert ManifestError("x").hint not in hint_line  # not the generic one
    assert not (tmp_path / "out").exists()


def test_an_id_with_spaces_becomes_a_safe_id(tmp_path):
    manifest = write(tmp_path / "m.csv", "id,audio,avatar\nmy  first clip,a.wav,v.mp4\nb,b.wav,v.mp4\n")
    first, _ = read_manifest(manifest, tmp_path / "out")
    assert first.id == "my_first_clip" and first.output.name == "my_first_clip.mp4"
