"""dhgen: batch renderer for lip-synced talking-head videos.

`dhgen.render(jobs, options=None, run=None, on_event=None, *, out_dir=None, progress=False)` is the Python API
(`dhgen.api`); `jobs` is a manifest path, a list of `dhgen.Job`, or a list of dicts with `audio` and `avatar`.
Names are imported on first use, so `import dhgen` stays light.
"""

__version__ = "0.1.0"

__all__ = ["render", "Job", "RenderOptions", "RunOptions", "ModelOptions", "EncodeOptions", "__version__"]

_LAZY = {
    "render": "dhgen.api",
    "Job": "dhgen.manifest",
    "RenderOptions": "dhgen.options",
    "RunOptions": "dhgen.options",
    "ModelOptions": "dhgen.options",
    "EncodeOptions": "dhgen.options",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dhgen' has no attribute {name!r}")
