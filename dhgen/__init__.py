"""dhgen: batch renderer for lip-synced talking-head videos.

`dhgen.render(jobs, options, run, on_event=None, progress=False)` is the Python API (see `dhgen.progress.render`);
it is imported on first use, so `import dhgen` stays light.
"""

__version__ = "0.1.0"

__all__ = ["render", "__version__"]


def __getattr__(name: str):
    if name == "render":
        from dhgen.progress import render

        return render
    raise AttributeError(f"module 'dhgen' has no attribute {name!r}")
