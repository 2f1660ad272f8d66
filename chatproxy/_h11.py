"""The h11 module the proxy drives: the compiled build when installed (the `fast` extra), else h11.

`h11-mypyc` is h11 compiled with mypyc, the same code and API under the name `h11_mypyc`; it cuts
the CPU time of parsing and framing by about a third. chatproxy never mixes the two: every module
takes its h11 from here.
"""

from __future__ import annotations

try:
    import h11_mypyc as h11
except ImportError:
    import h11

__all__ = ["h11"]
