"""chatproxy: a recording proxy for OpenAI-compatible APIs.

Embedding, inside a running event loop::

    import chatproxy

    config = chatproxy.Config(target=chatproxy.parse_target("http://127.0.0.1:8080/v1"), port=0)
    proxy = await chatproxy.serve(config)
    ...  # proxy.url, proxy.dataset_path, proxy.status()
    await proxy.stop()

The names below are imported on first use, so `import chatproxy` stays instant and starts nothing.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "serve": "chatproxy.proxy",
    "Proxy": "chatproxy.proxy",
    "Config": "chatproxy.config",
    "ConfigError": "chatproxy.config",
    "RecordOptions": "chatproxy.config",
    "Timeouts": "chatproxy.config",
    "parse_target": "chatproxy.config",
    "SessionLocked": "chatproxy.recorder.durable",
}

__all__ = ["__version__"] + sorted(_LAZY)


def __getattr__(name: str) -> object:  # PEP 562
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chatproxy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
