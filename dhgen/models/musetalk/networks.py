"""MuseTalk 1.5's three networks, each built from its own config file in the checkpoint folder (inference worker).

- the UNet: diffusers `UNet2DConditionModel` from `musetalkV15/musetalk.json`, weights from `unet.pth`;
- the VAE: diffusers `AutoencoderKL` from `sd-vae/` (its config.json and weights);
- whisper: the encoder of transformers' `WhisperModel` from `whisper/`, with the `WhisperFeatureExtractor` of
  its preprocessor_config.json.

Nothing about their sizes is assumed here: whatever the configs say is built. Files are read from the folder
only, never from a hub (`local_files_only`). A file that does not load is a `ModelLoadError` naming it and the
download step that provides it; out-of-memory passes through (the caller types it).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from dhgen.errors import ModelLoadError
from dhgen.models.musetalk.layout import EXTRA_HINT, UNET_STEP, VAE_STEP, WHISPER_STEP, Layout
from dhgen.models.torch_backend import is_cuda_oom, state_dict_mismatches

log = logging.getLogger(__name__)


@dataclass
class Networks:
    unet: torch.nn.Module
    vae: torch.nn.Module
    whisper: torch.nn.Module  # the encoder only
    features: object  # transformers.WhisperFeatureExtractor
    scaling: float  # the VAE's latent scaling factor (0.18215 for sd-vae-ft-mse)


def load_networks(layout: Layout, device: str, dtype: torch.dtype) -> Networks:
    """The three networks on `device` in `dtype`, in eval mode."""
    diffusers, transformers = _libraries()
    with _quiet(diffusers, transformers):
        nets = _load(diffusers, transformers, layout, device, dtype)
    log.info("loaded MuseTalk from %s on %s (%s)", layout.root, device, dtype)
    return nets


def _load(diffusers, transformers, layout: Layout, device: str, dtype: torch.dtype) -> Networks:
    unet = load_unet(diffusers, layout)
    with _loading(layout.vae_weights, VAE_STEP):
        safetensors = layout.vae_weights.suffix == ".safetensors"  # the file read_layout judged: no search
        vae = diffusers.AutoencoderKL.from_pretrained(
            layout.vae_dir, local_files_only=True, use_safetensors=safetensors
        )
    with _loading(layout.whisper_weights, WHISPER_STEP):
        whisper = transformers.WhisperModel.from_pretrained(layout.whisper_dir, local_files_only=True).encoder
    with _loading(layout.whisper_dir / "preprocessor_config.json", WHISPER_STEP):
        features = transformers.WhisperFeatureExtractor.from_pretrained(layout.whisper_dir, local_files_only=True)
    nets = [net.to(device=device, dtype=dtype).eval().requires_grad_(False) for net in (unet, vae, whisper)]
    return Networks(*nets, features=features, scaling=float(vae.config.scaling_factor))


def load_unet(diffusers, layout: Layout) -> torch.nn.Module:
    """The UNet laid out on the meta device (no memory, no random initialisation of its 860 M parameters), then
    given unet.pth's tensors, memory-mapped: the weights are in memory once, never twice."""
    with _loading(layout.unet_config, UNET_STEP), torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(json.loads(layout.unet_config.read_text(encoding="utf-8")))
    with _loading(layout.unet_weights, UNET_STEP):
        state = read_weights(layout.unet_weights)
    what = "MuseTalk 1.5's UNet (for its musetalk.json)"
    load_weights(unet, state, layout.unet_weights, what, UNET_STEP, assign=True)
    return unet


def read_weights(path: Path):
    """A torch file of weights, memory-mapped where its format allows (torch.save's zip; not the legacy one)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(module: torch.nn.Module, state, path: Path, what: str, step: str, assign: bool = False) -> None:
    """`state` into `module` (`assign`: its tensors become the module's), or a `ModelLoadError` naming `path` and
    what does not fit."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ModelLoadError(f"holds a {type(state).__name__}, not a state dict", path=path, hint=f"get it with {step}")
    problems = state_dict_mismatches(state, module.state_dict())
    if problems:
        raise ModelLoadError(f"not the weights of {what}: {'; '.join(problems)}", path=path, hint=f"get it with {step}")
    module.load_state_dict(state, assign=assign)


def _libraries():
    try:
        import diffusers
        import transformers
    except ImportError as exc:
        needed = exc.name or "diffusers and transformers"
        raise ModelLoadError(f"the musetalk model needs {needed}, which is not installed", hint=EXTRA_HINT) from exc
    return diffusers, transformers


@contextlib.contextmanager
def _quiet(*libraries):
    """The libraries' warnings (optional speed-ups, dtype advice) and progress bars, off while loading: dhgen
    logs what it loaded, and a worker's stderr is for crashes."""
    saved = [(lib.utils.logging.get_verbosity(), lib.utils.logging.is_progress_bar_enabled()) for lib in libraries]
    for lib in libraries:
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        for lib, (verbosity, bars) in zip(libraries, saved, strict=True):
            lib.utils.logging.set_verbosity(verbosity)
            if bars:
                lib.utils.logging.enable_progress_bar()


@contextlib.contextmanager
def _loading(path: Path, step: str):
    """Whatever reading `path` raises (but out-of-memory) becomes a `ModelLoadError` naming it."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - libraries raise anything for a bad file; the file is what we name
        if is_cuda_oom(exc):
            raise
        raise ModelLoadError(f"cannot load: {brief(exc)}", path=path, hint=f"get it with {step}") from exc


def brief(exc: BaseException, limit: int = 400) -> str:
    """An exception's type and message on one line, cut to `limit` characters (a state dict's key lists run
    to pages)."""
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"
