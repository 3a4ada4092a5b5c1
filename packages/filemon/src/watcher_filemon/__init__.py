"""JCode Watcher filemon agent."""

__version__ = "0.1.0"
