"""Build dist/chatproxy.pyz: one file that runs with any Python 3.9+ and nothing installed.

    python scripts/build_pyz.py [--output PATH]
    python3 dist/chatproxy.pyz --target http://127.0.0.1:8080/v1

The archive holds the chatproxy package, h11 (copied from the h11 this interpreter imports,
with its licence text) and a __main__ that runs chatproxy.cli.main. It is a zipapp (PEP 441):
`python3 chatproxy.pyz ...` or, with the shebang, `./chatproxy.pyz ...`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "dist" / "chatproxy.pyz"
# The floor pyproject.toml declares for h11 (0.16.0 fixed GHSA-vqfr-h8mv-ghfj); the bundle must not go below it.
H11_MINIMUM = (0, 16)

# Kept to syntax every Python 3 parses, so an interpreter below the floor says why instead of
# failing on an f-string or annotation inside the package.
MAIN = """\
import sys

if sys.version_info < (3, 9):
    sys.exit("chatproxy needs Python 3.9 or newer; this is Python %d.%d" % sys.version_info[:2])

from chatproxy.cli import main

raise SystemExit(main())
"""


def _skip_cache(folder: str, names: Sequence[str]) -> Sequence[str]:
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]


def _h11_license() -> Optional[str]:
    """The licence text shipped in h11's distribution metadata, if the installer kept it."""
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        dist = metadata.distribution("h11")
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if re.search(r"(^|/)(LICEN[CS]E|COPYING)[^/]*$", str(file), re.IGNORECASE):
            text = file.read_text(encoding="utf-8")
            if text:
                return text
    return None


def _version_tuple(text: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def stage(folder: Path) -> str:
    """Lay out the archive's contents in `folder`; returns a one-line description of what went in."""
    import h11

    if _version_tuple(h11.__version__) < H11_MINIMUM:
        raise SystemExit(f"h11 {h11.__version__} is installed; chatproxy needs h11>=0.16 (pip install -U h11)")
    shutil.copytree(ROOT / "chatproxy", folder / "chatproxy", ignore=_skip_cache)
    shutil.copytree(Path(h11.__file__).parent, folder / "h11", ignore=_skip_cache)
    license_text = _h11_license()
    if license_text is not None:
        (folder / "h11" / "LICENSE.txt").write_text(license_text, encoding="utf-8")
    if (ROOT / "LICENSE").is_file():
        shutil.copyfile(ROOT / "LICENSE", folder / "LICENSE")
    (folder / "__main__.py").write_text(MAIN, encoding="utf-8")
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "chatproxy" / "__init__.py").read_text(encoding="utf-8"))
    return (
        f"chatproxy {version.group(1) if version else '?'}, h11 {h11.__version__}"
        f"{'' if license_text else ' (h11 licence text not found in its metadata)'}"
    )


def build(output: Path) -> str:
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        contents = Path(tmp) / "chatproxy.pyz"
        description = stage(contents)
        partial = output.with_name(output.name + ".partial")
        zipapp.create_archive(contents, partial, interpreter="/usr/bin/env python3", compressed=True)
        partial.replace(output)
    return description


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the archive (default {DEFAULT_OUTPUT.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    description = build(args.output)
    size = args.output.stat().st_size
    print(f"built {args.output} ({description}; {size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
