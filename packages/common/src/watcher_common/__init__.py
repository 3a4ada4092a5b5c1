"""JCode Watcher shared core."""

__version__ = "0.1.0"
