"""MuseTalk 1.5: its checkpoint folder and every way it can be wrong, the whisper windows, the predictor
(determinism, the per-avatar cache), the paste mask, and jobs through every executor.

The networks are MuseTalk's architectures with a few channels and random weights, written once per module in
the published layout (`tools/musetalk_checkpoint.py --size tiny`); the face parser keeps its real size (its
architecture is fixed) with random weights in the published key layout. The sameness of the full-size
networks with MuseTalk's own modules is `tools/musetalk_sameness.py` (needs a MuseTalk checkout; not CI).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from itertools import islice
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import FIXTURES, KeptFrames, RecordingInference, bounded_tests, frame_digests, write_clip

from dhgen import pipeline
from dhgen.errors import ModelLoadError, OutOfMemory, UsageError
from dhgen.manifest import Job
from dhgen.models import CropBatch, get_family
from dhgen.models.musetalk import masks
from dhgen.models.musetalk.windows import WINDOW_STEPS, AudioWindows, window_starts
from dhgen.models.serving import load_for_serving
from dhgen.options import EncodeOptions, FaceOptions, ModelOptions, RenderOptions, RunOptions
from dhgen.runner import render

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from musetalk_checkpoint import write_checkpoint, write_parser  # noqa: E402

family = get_family("musetalk")
AVATAR = FIXTURES / "avatar.mp4"  # 256 x 256, 25 fps, 2 s
S = 256
TEST_BOUND_S = 240
FILES = [  # what is read, relative to the folder (no face-parse-bisent in the plain fixture)
    "musetalkV15/musetalk.json",
    "musetalkV15/unet.pth",
    "sd-vae/config.json",
    "sd-vae/diffusion_pytorch_model.bin",
    "whisper/config.json",
    "whisper/preprocessor_config.json",
    "whisper/pytorch_model.bin",
]


_bounded = bounded_tests(TEST_BOUND_S)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A tiny MuseTalk models/ folder without face-parsing weights."""
    folder = write_checkpoint(tmp_path_factory.mktemp("musetalk") / "models", "tiny", parser=False)
    (folder / "dwpose").mkdir()
    (folder / "dwpose" / "dw-ll_ucoco_384.pth").write_bytes(b"not read by dhgen")
    return folder


@pytest.fixture(scope="module")
def parsed_models(models, tmp_path_factory) -> Path:
    """The same folder with face-parse-bisent/ (BiSeNet at its real size, random weights)."""
    folder = tmp_path_factory.mktemp("musetalk-parsed") / "models"
    shutil.copytree(models, folder)
    write_parser(folder / "face-parse-bisent")
    return folder


@pytest.fixture(scope="module")
def predictor(models):
    return family.load(models, "cpu", "float32")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "a": write_clip(folder / "a.wav", 0.4, start=0.5),  # 10 frames at 25 fps
        "b": write_clip(folder / "b.wav", 0.4, start=2.0),
    }


def linked_copy(models: Path, tmp_path: Path) -> Path:
    """A copy of the folder made of symlinks (cheap), for breaking one piece."""
    copy = tmp_path / "models"
    shutil.copytree(models, copy, copy_function=lambda src, dst: Path(dst).symlink_to(src))
    return copy


def replace(path: Path, content: bytes) -> None:
    path.unlink()
    path.write_bytes(content)


def options_for(models: Path, tmp_path: Path, **model) -> RenderOptions:
    return RenderOptions(
        face=FaceOptions(cache_dir=tmp_path / "faces"),
        encode=EncodeOptions(threads=1),
        model=ModelOptions(name="musetalk", checkpoint=models, device="cpu", **model),
    )


# --- the checkpoint folder ------------------------------------------------------------------------------------------


def test_the_folder_passes_and_only_the_files_read_identify_it(models):
    family.check_checkpoint(models)
    files = [p.relative_to(models).as_posix() for p in family.checkpoint_files(models)]
    assert files == sorted(FILES)  # not dwpose/, which MuseTalk's script also fills


@pytest.mark.parametrize("piece", FILES)
def test_a_missing_piece_is_named_with_its_download_step(models, tmp_path, piece):
    folder = linked_copy(models, tmp_path)
    (folder / piece).unlink()
    with pytest.raises(UsageError) as info:
        family.check_checkpoint(folder)
    assert str((folder / piece).parent) in info.value.message and (folder / piece).name in info.value.message
    assert "download_weights.sh" in info.value.hint and "step" in info.value.hint
    source = {"musetalkV15": "TMElyralab/MuseTalk", "sd-vae": "sd-vae-ft-mse", "whisper": "whisper-tiny"}
    assert source[piece.split("/")[0]] in info.value.hint


@pytest.mark.parametrize(
    ("piece", "content", "said"),
    [
        ("musetalkV15/musetalk.json", b"{not json", "not readable JSON"),
        ("sd-vae/config.json", b"[1, 2]", "JSON list, not an object"),
        ("musetalkV15/unet.pth", b"random bytes, no weights", "not a PyTorch checkpoint"),
        ("whisper/pytorch_model.bin", b"\x00" * 64, "not a PyTorch checkpoint"),
    ],
)
def test_a_malformed_piece_is_named(models, tmp_path, piece, content, said):
    folder = linked_copy(models, tmp_path)
    replace(folder / piece, content)
    with pytest.raises(UsageError, match=said) as info:
        family.check_checkpoint(folder)
    assert str(folder / piece) in info.value.message


def test_a_torn_safetensors_file_is_named(models, tmp_path):
    folder = linked_copy(models, tmp_path)
    (folder / "whisper" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc")
    with pytest.raises(UsageError, match="not a safetensors file") as info:
        family.check_checkpoint(folder)  # the library would read it before pytorch_model.bin, so it is judged
    assert "model.safetensors" in info.value.message


def test_configs_from_different_releases_are_refused(models, tmp_path):
    folder = linked_copy(models, tmp_path)
    config = json.loads((folder / "musetalkV15" / "musetalk.json").read_text())
    replace(folder / "musetalkV15" / "musetalk.json", json.dumps({**config, "cross_attention_dim": 768}).encode())
    with pytest.raises(UsageError, match="cross_attention_dim is 768, but whisper's d_model is 16"):
        family.check_checkpoint(folder)


def test_half_a_face_parser_is_refused_but_none_is_fine(parsed_models, models, tmp_path):
    folder = linked_copy(parsed_models, tmp_path)
    (folder / "face-parse-bisent" / "resnet18-5c106cde.pth").unlink()
    with pytest.raises(UsageError, match="resnet18-5c106cde.pth is missing") as info:
        family.check_checkpoint(folder)
    assert "Face Parse Bisent" in info.value.hint and "remove face-parse-bisent/" in info.value.hint
    (folder / "face-parse-bisent" / "79999_iter.pth").unlink()
    family.check_checkpoint(folder)  # an empty face-parse-bisent/ (what a failed download leaves): dhgen's mask


@pytest.mark.parametrize("what", ["missing", "a file"])
def test_the_checkpoint_must_be_a_folder(tmp_path, what):
    path = tmp_path / "models"
    if what == "a file":
        path.write_bytes(b"x")
    with pytest.raises(UsageError, match="does not exist" if what == "missing" else "is not a folder") as info:
        family.check_checkpoint(path)
    assert "models/ folder" in info.value.hint


def test_the_cli_stops_before_anything_starts(models, tmp_path):
    folder = linked_copy(models, tmp_path)
    (folder / "sd-vae" / "config.json").unlink()
    out = tmp_path / "out.mp4"
    args = ["--audio", str(FIXTURES / "silence.wav"), "--avatar", str(AVATAR), "-o", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "dhgen.cli", "render", *args, "--model", "musetalk", "--checkpoint", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{folder / 'sd-vae' / 'config.json'} is missing" in result.stderr and "hint:" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_weights_of_another_network_fail_to_load_naming_the_file(models, tmp_path):
    import torch

    folder = linked_copy(models, tmp_path)
    (folder / "musetalkV15" / "unet.pth").unlink()
    torch.save(
        {"conv_in.weight": torch.zeros(2, 2), "head.weight": torch.zeros(1)}, folder / "musetalkV15" / "unet.pth"
    )
    family.check_checkpoint(folder)  # a torch file of weights: fine by its bytes
    with pytest.raises(ModelLoadError) as info:
        family.load(folder, "cpu", "float32")
    assert str(folder / "musetalkV15" / "unet.pth") in info.value.message
    assert "missing keys: " in info.value.message and "1 unexpected keys: head.weight" in info.value.message
    assert "conv_in.weight: checkpoint (2, 2) vs model (8, 8, 3, 3)" in info.value.message
    assert "MuseTalk V1.5" in info.value.hint


# --- audio windows ------------------------------------------------------------------------------------------------


def musetalk_windows(features: np.ndarray, fps: Fraction, n_frames: int) -> np.ndarray:
    """MuseTalk's chunker restated (pad, then slice), with the true rate and exact starts."""
    pad = -(-50 * fps.denominator // fps.numerator)  # ceil(50 / fps)
    zeros = np.zeros((pad * 2, *features.shape[1:]), features.dtype)
    right = np.zeros((pad * 6 + n_frames, *features.shape[1:]), features.dtype)  # room for dhgen's longer jobs
    padded = np.concatenate([zeros, features, right])
    return np.stack([padded[i * 50 * fps.denominator // fps.numerator :][:10].reshape(-1, features.shape[2])
                     for i in range(n_frames)])  # fmt: skip


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30), Fraction(30000, 1001)])
def test_windows_are_musetalks_at_each_frame_rate(fps):
    features = np.random.default_rng(0).normal(size=(200, 5, 3)).astype(np.float32)  # 4 s of whisper steps
    n_frames = int(4 * fps) + 3  # a few frames past the audio: they read zeros
    windows = AudioWindows(features, fps, n_frames)
    assert len(windows) == n_frames and windows.shape == (n_frames, WINDOW_STEPS * 5, 3)
    everything = windows[np.arange(n_frames)]
    assert np.array_equal(everything, musetalk_windows(features, fps, n_frames))
    assert np.array_equal(windows[[7, 2]], everything[[7, 2]])  # any frames, in any order
    assert np.array_equal(everything[5, 5 * 3 : 5 * 4], features[window_starts(fps, n_frames)[5] + 3])  # time-major


def test_frame_zero_is_padded_in_front_and_steps_are_exact():
    assert list(window_starts(Fraction(25), 3)) == [-4, -2, 0]  # 2 x ceil(50/25) zero steps in front
    assert list(window_starts(Fraction(30), 4)) == [-4, -3, -1, 1]  # floor(i * 5/3) - 2 x 2
    features = np.ones((10, 5, 3), np.float32)
    first = AudioWindows(features, Fraction(25), 1)[[0]][0].reshape(WINDOW_STEPS, 5, 3)
    assert not first[:4].any() and first[4:].all()


def test_29_97_fps_is_not_truncated_to_29():
    """MuseTalk's int(fps) would start frame 1000 at step 1724 - 4: 56 steps (1.1 s) late; dhgen keeps sync."""
    (start,) = window_starts(Fraction(30000, 1001), 1001)[[1000]]
    assert start == 1000 * 50 * 1001 // 30000 - 4 == 1664


def test_audio_shorter_than_a_step_gives_silent_windows():
    windows = AudioWindows(np.zeros((0, 5, 3), np.float32), Fraction(25), 2)
    assert windows[[0, 1]].shape == (2, 50, 3) and not windows[[0, 1]].any()


def test_job_processes_never_import_torch_for_musetalk(models):
    code = (
        "import sys; from fractions import Fraction; import numpy as np; import dhgen.pipeline;"
        "from dhgen.models import get_family; f = get_family('musetalk');"
        f"f.check_checkpoint({str(models)!r}); f.checkpoint_files({str(models)!r});"
        "w = f.conditioning(np.zeros((50, 5, 384), np.float32), Fraction(25), 25); w[[0, 1]];"
        "f.extract_crop(np.zeros((64, 64, 3), np.uint8), (0, 0, 64, 64));"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


# --- the predictor ----------------------------------------------------------------------------------------------


def crops_of(n: int, seed: int = 0) -> np.ndarray:
    """Face-like crops: the avatar's face with a little noise (so each is distinct)."""
    from dhgen.avatar import iter_frames, probe_avatar

    (_, frame), *_ = iter_frames(probe_avatar(AVATAR), 1, "loop")
    face = family.extract_crop(frame, (40, 30, 216, 236))
    noise = np.random.default_rng(seed).integers(-3, 4, (n, S, S, 3))
    return np.clip(face[None].astype(int) + noise, 0, 255).astype(np.uint8)


def test_audio_features_are_every_hidden_state_per_20_ms(predictor):
    rng = np.random.default_rng(0)
    features = predictor.audio_features(rng.normal(0, 0.1, 16_000 + 100).astype(np.float32))
    assert features.shape == (50, 2, 16) and features.dtype == np.float32  # 1 s; embedding + 1 layer; d_model
    longer = predictor.audio_features(rng.normal(0, 0.1, 31 * 16_000).astype(np.float32))
    assert longer.shape == (1550, 2, 16)  # two 30-s segments, the second trimmed to its audio


def test_faces_are_reproducible_and_independent_of_the_batch(models, predictor):
    crops = crops_of(5)
    cond = np.random.default_rng(1).normal(size=(5, 20, 16)).astype(np.float32)
    alone = predictor.predict(CropBatch(crops[:1], crops[:1], cond[:1]))
    assert alone.patches.shape == (1, S, S, 3) and alone.alphas.shape == (1, S, S)
    fresh = family.load(models, "cpu", "float32")  # nothing cached, another batch around the same crop
    merged = fresh.predict(CropBatch(crops[[3, 4, 1, 2, 0]], crops[:1], cond[[3, 4, 1, 2, 0]]))
    assert np.array_equal(merged.patches[4], alone.patches[0])
    assert not np.array_equal(merged.patches[0], alone.patches[0])  # and the crops do differ


def test_conditioning_changes_the_face(predictor):
    crops = crops_of(2)
    cond = np.random.default_rng(2).normal(size=(2, 20, 16)).astype(np.float32)
    result = predictor.predict(CropBatch(crops[[0, 0]], crops[:1], cond))
    assert not np.array_equal(result.patches[0], result.patches[1])


def test_crops_are_prepared_once_and_the_cache_is_bounded(models):
    from dhgen.models.musetalk.predictor import PreparedCrops

    fresh = family.load(models, "cpu", "float32")
    crops = crops_of(3)
    cond = np.zeros((6, 20, 16), np.float32)
    fresh.predict(CropBatch(crops[[0, 1, 0, 2, 1, 0]], crops[:1], cond))
    assert (fresh.cache.misses, fresh.cache.hits, len(fresh.cache.entries)) == (3, 0, 3)
    fresh.predict(CropBatch(crops[[2, 1]], crops[:1], cond[:2]))
    assert (fresh.cache.misses, fresh.cache.hits) == (3, 2)

    entry = next(iter(fresh.cache.entries.values()))
    small = PreparedCrops(budget=2 * entry.nbytes)
    for key in (b"a", b"b", b"c"):
        small.put(key, entry)
    assert list(small.entries) == [b"b", b"c"] and small.get(b"a") is None and small.get(b"c") is entry


def test_out_of_memory_is_typed_and_halves_the_slices(models):
    import torch

    fresh = family.load(models, "cpu", "float32")

    class Exhausted(torch.nn.Module):  # what a GPU does when the batch does not fit (this machine has none)
        def forward(self, *args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    fresh.nets.unet = Exhausted()
    before = fresh.micro_batch
    with pytest.raises(OutOfMemory, match="CUDA out of memory running musetalk"):
        fresh.predict(CropBatch(crops_of(1), crops_of(1), np.zeros((1, 20, 16), np.float32)))
    assert fresh.micro_batch == before // 2


# --- the paste mask ------------------------------------------------------------------------------------------------


def test_jaw_region_keeps_lips_leaves_the_nose_and_grows_the_skin_by_the_cone():
    labels = np.zeros((512, 512), np.int64)
    labels[150:350, 156:356] = masks.SKIN
    labels[220:280, 236:276] = masks.NOSE
    labels[300:330, 216:296] = 12  # upper lip
    labels[400:420, 250:262] = 13  # a lower lip below the skin
    region = masks.jaw_region(labels) > 0
    assert not region[230:270, 246:266].any()  # nose
    assert region[405:415, 252:260].all()  # lip
    # the cone (33 x 33, anchored at its centre, ones from row 10 down) reaches 6 rows down and 16 up
    assert region[355, 250:262].all() and not region[356, 250:262].any()
    assert region[134, 250:262].all() and not region[133, 250:262].any()


ABOVE = S // 2 - masks.blur_kernel(S) // 2  # rows above this are never pasted (the cut at the middle, blurred)


def test_paste_alphas_leave_the_upper_half_alone():
    fallback = masks.lower_face_mask(S)
    assert not fallback[:ABOVE].any() and fallback[S * 3 // 4, S // 2] == 255
    region = np.full((512, 512), 255, np.uint8)  # a parse that took everything
    alpha = masks.paste_alpha(region, S)
    assert not alpha[:ABOVE].any() and alpha[S * 3 // 4, S // 2] == 255
    assert alpha[S // 2 - 2, S // 2] < 128 < alpha[S // 2 + 2, S // 2]  # MuseTalk's soft edge at the middle


def test_face_parsing_weights_in_the_published_layout_give_per_crop_alphas(parsed_models):
    import torch

    from dhgen.models.musetalk.bisenet import BiSeNet, load_parser

    published = torch.load(parsed_models / "face-parse-bisent" / "79999_iter.pth", weights_only=True)
    shapes = {k: tuple(v.shape) for k, v in published.items()}
    assert shapes["cp.resnet.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["cp.resnet.layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["cp.arm16.conv.conv.weight"] == (128, 256, 3, 3)
    assert shapes["cp.arm32.conv_atten.weight"] == (128, 128, 1, 1)
    assert shapes["cp.conv_avg.bn.running_var"] == (128,)
    assert shapes["ffm.conv1.weight"] == (64, 256, 1, 1)
    assert shapes["conv_out.conv_out.weight"] == (19, 256, 1, 1) and shapes["conv_out16.conv_out.weight"] == (
        19,
        64,
        1,
        1,
    )
    assert set(BiSeNet().state_dict()) == {k for k in published if not k.startswith(("conv_out16", "conv_out32"))}

    predictor = family.load(parsed_models, "cpu", "float32")
    crops = crops_of(2)
    result = predictor.predict(CropBatch(crops, crops[:1], np.zeros((2, 20, 16), np.float32)))
    assert result.alphas.shape == (2, S, S) and not result.alphas[:, :ABOVE].any()
    parser = load_parser(
        *(parsed_models / "face-parse-bisent" / n for n in ("79999_iter.pth", "resnet18-5c106cde.pth")), "cpu"
    )
    canvas = torch.from_numpy(masks.parser_canvas(crops[0]))[None]
    labels = parser.labels(canvas)[0].numpy()
    assert np.array_equal(result.alphas[0], masks.paste_alpha(masks.jaw_region(labels), S))


def test_a_backbone_file_that_does_not_fit_is_named(parsed_models, tmp_path):
    import torch

    folder = linked_copy(parsed_models, tmp_path)
    backbone = folder / "face-parse-bisent" / "resnet18-5c106cde.pth"
    state = torch.load(backbone, weights_only=True)
    backbone.unlink()
    torch.save({**state, "conv1.weight": torch.zeros(64, 3, 3, 3)}, backbone)
    with pytest.raises(
        ModelLoadError, match=r"not the weights of a ResNet-18: 1 shape mismatches: conv1.weight"
    ) as info:
        family.load(folder, "cpu", "float32")
    assert str(backbone) in info.value.message


def test_pixels_outside_the_mask_are_the_avatars_exactly(models, clips, tmp_path):
    import cv2

    from dhgen.avatar import iter_frames

    options = options_for(models, tmp_path)
    inference = RecordingInference(pipeline.LocalInference(load_for_serving(options.model)))
    job = pipeline._Job(Job("x", clips["a"], AVATAR, tmp_path / "x.mp4"), options, inference, None)
    composited, masks_seen = KeptFrames(), []
    frames = iter_frames(job.info, job.n_out, options.avatar.loop)
    while chunk := list(islice(frames, pipeline.CHUNK_FRAMES)):
        submitted = job._submit(chunk)
        job._finish(submitted, composited)
        result = inference.results[submitted.ticket]
        for i, (x0, y0, x1, y1) in enumerate(r for r in submitted.rects if r):
            mask = np.zeros((job.info.height, job.info.width), bool)
            mask[y0:y1, x0:x1] = cv2.resize(result.alpha(i), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) > 0
            assert not mask[: y0 + (y1 - y0) * ABOVE // S - 1].any()  # never above the middle of the face box
            masks_seen.append(mask)
    with av.open(str(AVATAR)) as container:  # decoded apart from the pipeline
        avatar = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(composited) == len(masks_seen) == job.n_out == 10
    for i, (frame, mask) in enumerate(zip(composited, masks_seen, strict=True)):
        assert np.array_equal(frame[~mask], avatar[i][~mask]), f"frame {i} changed outside the mask"
        assert 0 < mask.mean() < 0.5 and (frame[mask] != avatar[i][mask]).any()


# --- whole jobs ----------------------------------------------------------------------------------------------------


def test_ten_jobs_on_one_avatar_encode_its_frames_once(models, clips, tmp_path):
    options = options_for(models, tmp_path)
    served = load_for_serving(options.model)
    inference = pipeline.LocalInference(served)
    cache = served.predictor.cache
    first = pipeline.render_job(Job("a", clips["a"], AVATAR, tmp_path / "a.mp4"), options, inference)
    misses = cache.misses
    second = pipeline.render_job(Job("b", clips["b"], AVATAR, tmp_path / "b.mp4"), options, inference)
    assert misses == 10 and cache.misses == misses and cache.hits >= 10  # the same ten avatar frames
    assert first.frames == second.frames == 10 and first.frames_digest != second.frames_digest  # other speech


@contextlib.contextmanager
def torch_threads(n: int):
    """This process's model runs with n CPU threads, as a worker given n cores does: a convolution's sums are
    ordered by how they are split across threads, so frames are bit-identical for one thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def in_process(models, clips, tmp_path_factory):
    """Both clips rendered in this process, the model on every core (what the local CPU worker of a model slower
    than the encoder gets): the records the local workers must reproduce."""
    from dhgen.executors.inprocess import InProcessExecutor

    out = tmp_path_factory.mktemp("in-process")
    options = options_for(models, out)
    jobs = [Job(name, audio, AVATAR, out / f"{name}.mp4") for name, audio in clips.items()]
    with torch_threads(len(os.sched_getaffinity(0))):
        summary = render(jobs, options, RunOptions(out_dir=out), executor=InProcessExecutor(options))
    return {r.job_id: r for r in summary.records}


def test_a_job_in_process_is_a_video_of_the_speech(in_process):
    record = in_process["a"]
    assert record.status == "succeeded" and record.frames == 10
    assert record.model["name"] == "musetalk" and record.model["device"] == "cpu" and record.model["dtype"] == "float32"
    assert record.model["backend"] == "torch" and len(record.model["checkpoint_sha256"]) == 64
    assert len(frame_digests(Path(record.output))) == 10


def test_the_same_job_twice_has_the_same_digest(in_process, models, clips, tmp_path):
    options = options_for(models, tmp_path)
    again = pipeline.render_job(
        Job("a", clips["a"], AVATAR, tmp_path / "a.mp4"),
        options,
        pipeline.LocalInference(load_for_serving(options.model)),
    )
    assert again.frames_digest == in_process["a"].frames_digest


def test_local_workers_render_the_same_frames(in_process, models, tmp_path):
    options = options_for(models, tmp_path)
    jobs = [Job(name, Path(r.audio), AVATAR, tmp_path / f"{name}.mp4") for name, r in in_process.items()]
    summary = render(jobs, options, RunOptions(out_dir=tmp_path, jobs=2, backoff_s=0.1))
    for record in summary.records:  # two jobs at once: their crops merged into the worker's batches
        assert record.status == "succeeded", record.error
        assert record.frames_digest == in_process[record.job_id].frames_digest
        assert record.model == in_process[record.job_id].model


def test_ray_renders_the_same_frames(ray_cluster, in_process, models, tmp_path):
    """A still portrait: its face track is the same whatever a node's face cache holds (a video's track depends a
    little on how many frames the job that cached it needed)."""
    options = options_for(models, tmp_path)
    job = Job("p", Path(in_process["a"].audio), FIXTURES / "portrait.png", tmp_path / "p.mp4")
    run = RunOptions(out_dir=tmp_path, executor="ray", ray_address=ray_cluster.address, jobs=1, job_timeout=180)
    (record,) = render([job], options, run).records
    assert record.status == "succeeded", record.errors
    assert record.frames == 10 and record.model == in_process["a"].model
    with torch_threads(1):  # the actor's share of a one-CPU node
        inference = pipeline.LocalInference(load_for_serving(options.model))
        reference = pipeline.render_job(dataclasses.replace(job, output=tmp_path / "here.mp4"), options, inference)
    assert record.frames_digest == reference.frames_digest
