"""codeb-tui: blue-green container deployment engine and operations console."""

__version__ = "0.1.0"
