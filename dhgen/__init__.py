"""dhgen: batch renderer for lip-synced talking-head videos."""

__version__ = "0.1.0"
