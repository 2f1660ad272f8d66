"""What ships: the wheel and the single-file build hold the whole package, and the installed wheel runs.

An editable install (what CI and developers use) imports straight from the source tree, so a
module or data file that the wheel leaves out is never noticed there. These tests build both
artefacts from the tree as it is, compare their contents with it file by file, then install the
wheel, not editable, into a fresh virtual environment without the tree on its path, and run the
proxy from it: a chat is relayed and recorded by a recorder process started from the installed copy.

The wheel is built offline from a copy of the tree (`pip wheel --no-build-isolation`, the
setuptools of the test extra): a copy, so that no build/ folder is left in the tree and no stale
one from an earlier build can slip a deleted module back in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Sequence, Set

import pytest

from chatproxy import __version__

from fake_upstream import FakeUpstream
from subproc import ROOT, ProxyProcess, chat

PACKAGE = ROOT / "chatproxy"
# What a build reads besides the package: the metadata, the readme it embeds, the licence it ships.
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")
# Stand-ins for the static files a subpackage may serve (`[tool.setuptools.package-data]`).
PROBE_DATA = {
    "chatproxy/review/__init__.py": '"""A probe subpackage with static files."""\n',
    "chatproxy/review/static/index.html": "<!doctype html><title>probe</title>\n",
    "chatproxy/review/static/style.css": "body { margin: 0; }\n",
    "chatproxy/review/static/app.js": "console.log('probe');\n",
    "chatproxy/banner.html": "<p>probe at the package's top</p>\n",
}


def _is_cache(name: str) -> bool:
    return name == "__pycache__" or name.endswith((".pyc", ".pyo"))


def package_files(package: Path) -> FrozenSet[str]:
    """Every file of the package a user would get: paths like chatproxy/recorder/worker.py.

    Bytecode caches and hidden files (editor swap files, .DS_Store) are not the package's.
    """
    found: Set[str] = set()
    for path in package.rglob("*"):
        relative = path.relative_to(package.parent)
        if path.is_file() and not any(_is_cache(part) or part.startswith(".") for part in relative.parts):
            found.add(relative.as_posix())
    return frozenset(found)


def _ignore(folder: str, names: Sequence[str]) -> List[str]:
    return [name for name in names if _is_cache(name)]


def copy_project(dest: Path) -> Path:
    """The files a build reads, copied to `dest` (which is returned)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        if (ROOT / name).exists():
            shutil.copyfile(ROOT / name, dest / name)
    shutil.copytree(PACKAGE, dest / "chatproxy", ignore=_ignore)
    (dest / "scripts").mkdir()
    shutil.copyfile(ROOT / "scripts" / "build_pyz.py", dest / "scripts" / "build_pyz.py")
    return dest


def pip_env() -> Dict[str, str]:
    """The environment for pip: no configuration files (no extra indexes, find-links, constraints)."""
    env = dict(os.environ)
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def build_wheel(project: Path, out: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--wheel-dir", str(out), str(project)],
        capture_output=True,
        text=True,
        timeout=120,
        env=pip_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = sorted(out.glob("chatproxy-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def build_pyz(project: Path, output: Path) -> Path:
    done = subprocess.run(
        [sys.executable, str(project / "scripts" / "build_pyz.py"), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return output


@dataclass(frozen=True)
class Built:
    """An artefact and the package files of the tree it was built from, listed just before the build."""

    path: Path
    expected: FrozenSet[str]

    def names(self) -> Set[str]:
        with zipfile.ZipFile(self.path) as archive:
            return {name for name in archive.namelist() if not name.endswith("/")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Built:
    expected = package_files(PACKAGE)
    project = copy_project(tmp_path_factory.mktemp("wheel-src") / "project")
    return Built(build_wheel(project, tmp_path_factory.mktemp("wheel")), expected)


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Built:
    expected = package_files(PACKAGE)
    output = tmp_path_factory.mktemp("pyz") / "chatproxy.pyz"
    # The real script on the real tree: this is the build that `scripts/build_pyz.py` makes.
    return Built(build_pyz(ROOT, output), expected)


def _top_level(names: Set[str]) -> Set[str]:
    return {name.split("/", 1)[0] for name in names}


def _from_tests_or_scripts(names: Set[str]) -> List[str]:
    """Entries that come from tests/ or scripts/, by folder or by the name of one of their files."""
    theirs = {p.name for folder in ("tests", "scripts") for p in (ROOT / folder).rglob("*") if p.is_file()}
    theirs -= {"__init__.py", "__main__.py", "LICENSE"}
    return sorted(
        name
        for name in names
        if name.startswith(("tests/", "scripts/")) or ("/" not in name and name in theirs) or "/tests/" in name
    )


def test_the_tree_has_the_subpackages_these_checks_are_about() -> None:
    """Guards the next tests: an empty or flat listing would make them pass without proving anything."""
    files = package_files(PACKAGE)
    for module in ("__init__.py", "cli.py", "recorder/worker.py", "recorder/capture.py", "apis/__init__.py"):
        assert f"chatproxy/{module}" in files
    assert {path.split("/")[1] for path in files if path.count("/") > 1} >= {"recorder", "apis", "chats", "commands"}


def test_wheel_holds_every_module_and_data_file_of_the_tree(wheel: Built) -> None:
    names = wheel.names()
    missing = sorted(wheel.expected - names)
    assert not missing, f"in chatproxy/ but not in the wheel (see [tool.setuptools] in pyproject.toml): {missing}"
    # Nothing the tree does not have: a stale build/ folder would bring back a deleted module.
    stale = sorted(n for n in names if n.startswith("chatproxy/") and n not in wheel.expected)
    assert not stale, stale
    assert _top_level(names) == {"chatproxy", f"chatproxy-{__version__}.dist-info"}
    assert not [n for n in names if _is_cache(n.rsplit("/", 1)[-1]) or "__pycache__" in n]
    assert not _from_tests_or_scripts(names)


def test_pyz_holds_every_module_and_data_file_of_the_tree(pyz: Built) -> None:
    names = pyz.names()
    missing = sorted(pyz.expected - names)
    assert not missing, f"in chatproxy/ but not in the .pyz: {missing}"
    stale = sorted(n for n in names if n.startswith("chatproxy/") and n not in pyz.expected)
    assert not stale, stale
    assert _top_level(names) <= {"__main__.py", "LICENSE", "chatproxy", "h11"}
    assert {"__main__.py", "h11/__init__.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert not _from_tests_or_scripts(names)


@pytest.mark.parametrize("artefact", ["wheel", "pyz"])
def test_static_files_of_a_subpackage_ship(artefact: str, tmp_path: Path) -> None:
    """*.html, *.css and *.js anywhere under chatproxy/, in a package or in a plain folder of one."""
    project = copy_project(tmp_path / "project")
    for name, text in PROBE_DATA.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text, encoding="utf-8")
    if artefact == "wheel":
        built = Built(build_wheel(project, tmp_path / "out"), package_files(project / "chatproxy"))
    else:
        built = Built(build_pyz(project, tmp_path / "out" / "chatproxy.pyz"), package_files(project / "chatproxy"))
    names = built.names()
    assert set(PROBE_DATA) <= built.expected  # the listing sees them, so the next line checks them
    assert not sorted(set(PROBE_DATA) - names)
    assert not sorted(built.expected - names)


# -- the installed wheel, run -----------------------------------------------------------------


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _pip_can_target_another_python() -> bool:
    """pip 22.3 and later install into another interpreter's environment with `--python`."""
    version = tuple(int(part) for part in metadata.version("pip").split(".")[:2] if part.isdigit())
    return version >= (22, 3)


def _copy_h11(site_packages: Path) -> str:
    """h11 as the test environment has it (package and metadata), copied in: no index, no network."""
    dist = metadata.distribution("h11")
    tops = {Path(str(file)).parts[0] for file in dist.files or ()}
    tops = {top for top in tops if top == "h11" or (top.startswith("h11-") and top.endswith(".dist-info"))}
    assert "h11" in tops and any(top.endswith(".dist-info") for top in tops), tops
    for top in tops:
        source = Path(str(dist.locate_file(top)))
        shutil.copytree(source, site_packages / top, ignore=_ignore)
    return dist.version


def _clean_env() -> Dict[str, str]:
    """The caller's environment without anything that could put the source tree on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
    env.pop("VIRTUAL_ENV", None)
    return env


@dataclass(frozen=True)
class Installed:
    python: Path
    site_packages: Path


@pytest.fixture(scope="module")
def installed(wheel: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A new virtual environment (no system site-packages) with h11 and the built wheel installed."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    with_pip = not _pip_can_target_another_python()
    subprocess.run(
        [sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(venv)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    python = _venv_python(venv)
    site = subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    site_packages = Path(site)
    _copy_h11(site_packages)
    pip = [str(python), "-m", "pip"] if with_pip else [sys.executable, "-m", "pip", "--python", str(python)]
    # Not --no-deps: pip checks the wheel's h11 requirement against the h11 just copied in, offline.
    done = subprocess.run(
        pip + ["install", "--no-index", "--no-cache-dir", str(wheel.path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=pip_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return Installed(python, site_packages)


def _children(pid: int) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        if int(fields[1]) == pid:
            yield int(entry.name)


def _cmdline(pid: int) -> List[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def test_installed_wheel_imports_from_the_environment_not_the_tree(installed: Installed, tmp_path: Path) -> None:
    """Every module imports from site-packages; the console script is there and runs."""
    code = (
        "import importlib, json, pkgutil, chatproxy, h11\n"
        "names = [m.name for m in pkgutil.walk_packages(chatproxy.__path__, 'chatproxy.')]\n"
        "files = {n: importlib.import_module(n).__file__ for n in names if n != 'chatproxy.__main__'}\n"
        "print(json.dumps({'chatproxy': chatproxy.__file__, 'h11': h11.__file__, 'modules': files}))\n"
    )
    done = subprocess.run(
        [str(installed.python), "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_clean_env()
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    site = str(installed.site_packages)
    assert found["chatproxy"].startswith(site) and found["h11"].startswith(site), found
    assert not [path for path in found["modules"].values() if not path.startswith(site)]
    importable = {"chatproxy/" + name.split(".", 1)[1].replace(".", "/") for name in found["modules"]}
    assert importable >= {"chatproxy/recorder/worker", "chatproxy/apis/sse", "chatproxy/commands/export"}
    script = installed.python.with_name("chatproxy")
    version = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_clean_env()
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"chatproxy {__version__}"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the recorder process through /proc")
def test_installed_wheel_relays_and_records_with_a_recorder_process(
    installed: Installed, upstream: FakeUpstream, tmp_path: Path
) -> None:
    run_dir = tmp_path / "cwd"  # not the repository: the source tree cannot be imported from here
    run_dir.mkdir()
    datasets = tmp_path / "datasets"
    command = [str(installed.python), "-m", "chatproxy", "--target", upstream.url, "--port", "0"]
    command += ["--datasets", str(datasets), "--session", "from-wheel"]
    workers: List[List[str]] = []
    with ProxyProcess(command, env=_clean_env(), cwd=run_dir) as proc:
        proc.wait_started()
        workers = [cmd for cmd in map(_cmdline, _children(proc.proc.pid)) if any("recorder.worker" in a for a in cmd)]
        reply = chat(proc.port, "hello from the wheel")
        assert reply["choices"][0]["message"]["content"] == "echo: hello from the wheel"
        proc.wait_for(r"recorded from-wheel: fake-model, 2 turns")
        assert proc.stop(signal.SIGTERM) == 0, "\n".join(proc.lines)
    log = "\n".join(proc.lines)
    assert "recording in this process instead" not in log, log
    assert "Traceback" not in log, log
    # The recorder ran as a child of the proxy, from the installed copy: its last argument is the
    # folder it imports chatproxy from (recorder/process.py, worker_command()).
    assert len(workers) == 1, workers
    assert any("chatproxy.recorder.worker" in arg for arg in workers[0]), workers[0]
    assert workers[0][0] == str(installed.python), workers[0]
    assert Path(workers[0][-1]).resolve() == installed.site_packages.resolve(), workers[0]
    records = json.loads((datasets / "from-wheel.json").read_text(encoding="utf-8"))
    assert [turn["value"] for turn in records[0]["conversations"]] == [
        "hello from the wheel",
        "echo: hello from the wheel",
    ]
