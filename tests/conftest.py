import wave
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own face cache, so cache hits are the test's own doing."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


def write_clip(target: Path, seconds: float, source: Path = FIXTURES / "speech.wav", start: float = 0.0) -> Path:
    """A piece of a fixture WAV (from `start`, `seconds` long) written to `target`: short, distinct audio."""
    with wave.open(str(source)) as src:
        params = src.getparams()
        src.setpos(int(start * params.framerate))
        data = src.readframes(int(round(seconds * params.framerate)))
    target.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(target), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(data)
    return target
