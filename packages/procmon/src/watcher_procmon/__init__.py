"""JCode Watcher procmon agent."""

__version__ = "0.1.0"
