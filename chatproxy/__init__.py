"""chatproxy: a recording proxy for OpenAI-compatible APIs."""

__version__ = "0.1.0"
