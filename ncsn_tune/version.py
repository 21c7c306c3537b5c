"""The package version (a module of its own, so that every layer can say which version wrote a file)."""

__version__ = "0.2.0"
