"""cbhub: the place where asynchronous callbacks land and are awaited."""

__version__ = "0.1.0"
