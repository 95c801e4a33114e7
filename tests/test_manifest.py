"""Manifests: CSV and JSON Lines, paths relative to the manifest, unique ids, outputs kept inside the folder."""

import json
import os
from pathlib import Path

import pytest

from dhgen.errors import ManifestError, UsageError
from dhgen.manifest import Job, input_fingerprint, read_manifest, single_job


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


def test_input_fingerprint_follows_content_and_settings(tmp_path):
    a, v = tmp_path / "a.wav", tmp_path / "v.mp4"
    a.write_bytes(b"one")
    v.write_bytes(b"face")
    job = Job("x", a, v, tmp_path / "x.mp4")
    first = input_fingerprint(job, {"crf": 20})
    assert first == input_fingerprint(Job("y", a, v, tmp_path / "y.mp4"), {"crf": 20})  # content, not names
    assert first != input_fingerprint(job, {"crf": 21})
    a.write_bytes(b"two")
    assert first != input_fingerprint(job, {"crf": 20})
    a.unlink()
    assert input_fingerprint(job, {"crf": 20}) is None


def test_a_file_is_hashed_once_until_it_changes(tmp_path):
    from dhgen.manifest import _digest, file_digest

    avatar = write(tmp_path / "v.mp4", "first")
    first = file_digest(avatar)
    reads = _digest.cache_info().misses
    assert file_digest(avatar) == first and _digest.cache_info().misses == reads  # remembered, not re-read
    os.utime(avatar, ns=(1, 1))
    avatar.write_text("second")
    assert file_digest(avatar) != first
