"""MuseTalk 1.5's predictor (inference worker): whisper states once per job, then per batch of crops one UNet
step between the VAE's encoder and decoder, and the alpha each face is pasted through.

Per crop (256 x 256 BGR, the face box stretched with LANCZOS4 by the job): RGB / 255, a copy with rows 128-255
zeroed, both normalised to [-1, 1] and encoded; latents = scaling factor x the posterior *mean* (MuseTalk draws a
sample, which makes its frames random; these are reproducible). The UNet gets [masked, reference] latents,
timestep 0, and the frame's whisper window plus MuseTalk's sinusoidal positional encoding; its output is scaled
back, decoded, mapped from [-1, 1] to 0..255 (clamped, rounded) and returned as BGR.

The UNet and the decoder run on slices of exactly `micro_batch` rows, the last one padded (the encoder and the
face parser, once per avatar crop, on one crop at a time): a row's result then does not depend on how many crops
a worker merged into its batch, or which (convolution kernels differ with the batch size by a last bit, enough
to flip a pixel), so a job's frames and digest are the same under every executor and concurrency. After an
out-of-memory error the slice halves (and later frames may differ in that last bit).

Preparation is cached: a crop's latents and paste alpha depend on the crop alone, so they are kept, keyed by a
hash of the crop's pixels (`PreparedCrops`, least recently used first out, bounded in bytes). Every job on one
avatar cuts the same crops from the same frames, so the avatar is encoded once per worker, whatever the number
of jobs, and only the UNet step and the decode run per output frame.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dhgen.errors import ModelLoadError, OutOfMemory, UsageError
from dhgen.models.batches import CropBatch, PatchBatch
from dhgen.models.musetalk.layout import FOLDER_HINT, read_layout
from dhgen.models.musetalk.masks import jaw_region, lower_face_mask, parser_canvas, paste_alpha
from dhgen.models.musetalk.networks import Networks, load_networks
from dhgen.models.musetalk.windows import WINDOW_STEPS, step_count
from dhgen.models.torch_backend import is_cuda_oom

log = logging.getLogger(__name__)

CACHE_BYTES = 512 * 2**20  # prepared crops kept per worker: ~5,000 crops with parsing alphas (96 KiB each)
SAMPLE_RATE = 16_000  # what dhgen's audio is decoded at; whisper's feature extractor must agree
MICRO_BATCH = {"cpu": 4, "cuda": 16}  # every network runs on exactly this many rows at a time (see `_rows`)


@dataclass
class Prepared:
    """What the model needs of one crop, whatever the audio: its latents and its paste alpha."""

    latents: torch.Tensor  # (2 x latent channels, h, w) on the device: masked, then reference
    alpha: np.ndarray | None  # uint8 (S, S) from face parsing; None without a parser (one shared mask)

    @property
    def nbytes(self) -> int:
        alpha = 0 if self.alpha is None else self.alpha.nbytes
        return self.latents.numel() * self.latents.element_size() + alpha


class PreparedCrops:
    """Prepared crops keyed by the crop's content, least recently used evicted past `budget` bytes."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget, self.used = budget, 0
        self.entries: OrderedDict[bytes, Prepared] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: bytes) -> Prepared | None:
        found = self.entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return found

    def put(self, key: bytes, prepared: Prepared) -> None:
        self.entries[key] = prepared
        self.used += prepared.nbytes
        while self.used > self.budget and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.used -= old.nbytes


def crop_key(crop: np.ndarray) -> bytes:
    """A crop's identity: blake2b of its pixels (and shape)."""
    digest = hashlib.blake2b(np.ascontiguousarray(crop).tobytes(), digest_size=16)
    digest.update(repr(crop.shape).encode())
    return digest.digest()


def positional_encoding(length: int, width: int) -> torch.Tensor:
    """float32 (length, width): sin at even, cos at odd features, wavelengths up to 10000 (Vaswani et al.),
    as MuseTalk adds to each audio window."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    encoding = torch.zeros(length, width)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)
    return encoding


class MuseTalkPredictor:
    """`audio_features(samples)` -> whisper states; `predict(CropBatch)` -> generated faces and their alphas."""

    fixed_shapes = True  # the UNet and the decoder run on padded slices of micro_batch crops, whatever comes

    def __init__(self, nets: Networks, parser, device: str, dtype: torch.dtype, crop_size: int = 256) -> None:
        self.nets, self.parser, self.crop_size = nets, parser, crop_size
        self._device, self._dtype = torch.device(device), dtype
        self.dtype = "float16" if dtype == torch.float16 else "float32"
        config = nets.whisper.config
        tokens = WINDOW_STEPS * (config.encoder_layers + 1)  # every hidden state of every step in a window
        self.positions = positional_encoding(tokens, config.d_model).to(self._device, dtype)
        self.timestep = torch.tensor([0], device=self._device)
        self.cache = PreparedCrops()
        self.micro_batch = MICRO_BATCH.get(self._device.type, MICRO_BATCH["cpu"])
        self.fallback_alpha = None if parser is not None else lower_face_mask(crop_size)[None]

    @property
    def device(self) -> str:
        return str(self._device)

    # --- audio ---------------------------------------------------------------------------------------------------

    def audio_features(self, samples: np.ndarray) -> np.ndarray:
        """float32 (steps, layers, width): whisper's encoder states for 16 kHz mono `samples`, 30 s at a time
        (whisper's segment), every hidden state stacked per step, trimmed to the audio's own length."""
        samples = np.asarray(samples, np.float32)
        extractor = self.nets.features
        states = []
        with torch.inference_mode(), self._typed_oom("whisper"):
            for start in range(0, len(samples), extractor.n_samples):
                segment = samples[start : start + extractor.n_samples]
                mel = extractor(segment, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
                hidden = self.nets.whisper(mel.to(self._device, self._dtype), output_hidden_states=True).hidden_states
                states.append(torch.stack(hidden, dim=2)[0])
            stacked = torch.cat(states)[: step_count(len(samples), SAMPLE_RATE)]
        return stacked.float().cpu().numpy()

    # --- faces -----------------------------------------------------------------------------------------------------

    def predict(self, batch: CropBatch) -> PatchBatch:
        crops = np.asarray(batch.crops)
        size = self.crop_size
        if crops.shape[1:] != (size, size, 3):
            raise ValueError(f"musetalk expects crops of shape (B, {size}, {size}, 3), got {crops.shape}")
        if len(crops) == 0:
            return PatchBatch(np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8))
        with torch.inference_mode(), self._typed_oom(f"a batch of {len(crops)}"):
            prepared = self._prepared(crops)
            latents = torch.stack([p.latents for p in prepared])
            predicted = self._rows(self._unet, latents, self._audio(batch.cond))
            faces = self._rows(self._decode, predicted)
        alphas = self.fallback_alpha if self.parser is None else np.stack([p.alpha for p in prepared])
        return PatchBatch(np.ascontiguousarray(faces.cpu().numpy()), alphas)

    def _rows(self, network, *inputs: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """`network` over the rows of `inputs` in slices of exactly `k` rows (default `micro_batch`; the last slice
        padded with copies of its first row), so that no row's result depends on the others."""
        size, k = len(inputs[0]), k or self.micro_batch
        results = []
        for start in range(0, size, k):
            part = [x[start : start + k] for x in inputs]
            short = k - len(part[0])
            if short:
                part = [torch.cat([x, x[:1].expand(short, *x.shape[1:])]) for x in part]
            # one memory layout for every slice: kernels differ between layouts (a permuted view is channels-last)
            results.append(network(*[x.contiguous() for x in part])[: k - short])
        return torch.cat(results)

    def _unet(self, latents: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self.nets.unet(latents, self.timestep, encoder_hidden_states=audio).sample

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.nets.scaling * self.nets.vae.encode(images).latent_dist.mean

    def _audio(self, cond) -> torch.Tensor:
        cond = np.ascontiguousarray(cond, np.float32)
        if cond.ndim != 3 or cond.shape[1:] != tuple(self.positions.shape):
            raise ValueError(f"musetalk expects audio windows (B, {tuple(self.positions.shape)}), got {cond.shape}")
        return torch.from_numpy(cond).to(self._device, self._dtype) + self.positions

    def _prepared(self, crops: np.ndarray) -> list[Prepared]:
        """Each crop's preparation, from the cache or computed now (each distinct crop once)."""
        keys = [crop_key(crop) for crop in crops]
        found = {key: self.cache.get(key) for key in dict.fromkeys(keys)}
        missing = [key for key, value in found.items() if value is None]
        if missing:
            first = {key: i for i, key in reversed(list(enumerate(keys)))}
            for key, prepared in zip(missing, self._prepare(crops[[first[k] for k in missing]]), strict=True):
                found[key] = prepared
                self.cache.put(key, prepared)
            log.debug(
                "musetalk: prepared %d crops (%d cached, %d hits so far)",
                len(missing),
                len(self.cache.entries),
                self.cache.hits,
            )
        return [found[key] for key in keys]

    def _prepare(self, crops: np.ndarray) -> list[Prepared]:
        """VAE latents of each crop, lower half masked and whole, in one encoder pass; and its paste alpha."""
        rgb = torch.from_numpy(crops).to(self._device).flip(-1).permute(0, 3, 1, 2).float() / 255.0
        masked = rgb.clone()
        masked[:, :, self.crop_size // 2 :] = 0.0
        images = ((torch.cat([masked, rgb]) - 0.5) / 0.5).to(self._dtype)
        latents = self._rows(self._encode, images, k=1)  # once per avatar crop: no padding is worth it
        paired = torch.cat([latents[: len(crops)], latents[len(crops) :]], dim=1)
        alphas = self._alphas(crops) if self.parser is not None else [None] * len(crops)
        return [Prepared(paired[i].clone(), alpha) for i, alpha in enumerate(alphas)]

    def _alphas(self, crops: np.ndarray) -> list[np.ndarray]:
        canvases = torch.from_numpy(np.stack([parser_canvas(crop) for crop in crops])).to(self._device)
        labels = self._rows(self.parser.labels, canvases, k=1).cpu().numpy()
        return [paste_alpha(jaw_region(label), self.crop_size) for label in labels]

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """uint8 BGR (B, S, S, 3) faces from UNet latents, as MuseTalk's `decode_latents`."""
        image = self.nets.vae.decode((1 / self.nets.scaling) * latents).sample
        image = (image / 2 + 0.5).clamp(0, 1).float()
        return (image * 255).round().to(torch.uint8).flip(1).permute(0, 2, 3, 1)

    @contextlib.contextmanager
    def _typed_oom(self, what: str):
        try:
            yield
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not is_cuda_oom(exc):
                raise
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
            self.micro_batch = max(1, self.micro_batch // 2)
            raise OutOfMemory(
                f"CUDA out of memory running musetalk on {what} on {self.device} (now {self.micro_batch} at a time)"
            ) from exc


def load_predictor(checkpoint: Path, device: str, dtype: str, crop_size: int = 256) -> MuseTalkPredictor:
    """The predictor for MuseTalk's models/ folder on `device`: fp16 on CUDA when asked, fp32 on the CPU."""
    try:
        layout = read_layout(checkpoint)
    except UsageError as exc:  # judged before the run; changed since
        raise ModelLoadError(exc.message, hint=exc.hint or FOLDER_HINT) from exc
    torch_dtype = torch.float16 if dtype == "float16" and device.startswith("cuda") else torch.float32
    nets = load_networks(layout, device, torch_dtype)
    if nets.features.sampling_rate != SAMPLE_RATE:
        raise ModelLoadError(
            f"whisper's feature extractor wants {nets.features.sampling_rate} Hz audio, not {SAMPLE_RATE}",
            path=layout.whisper_dir / "preprocessor_config.json",
        )
    parser = None
    if layout.parser_weights is not None:
        from dhgen.models.musetalk.bisenet import load_parser

        parser = load_parser(layout.parser_weights, layout.backbone_weights, device)
    else:
        log.info("musetalk: no face-parse-bisent weights in %s; pasting through dhgen's lower-face mask", checkpoint)
    return MuseTalkPredictor(nets, parser, device, torch_dtype, crop_size)
