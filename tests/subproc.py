"""chatproxy as a separate process, as users run it; and the other Python interpreters on this machine."""

from __future__ import annotations

import glob
import http.client
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
STARTUP = re.compile(r"listening on (http://\S+) -> (\S+), dataset (.+)$")


class ProxyProcess:
    """A running `chatproxy` command; its stderr lines are collected by a thread for the test to wait on."""

    def __init__(
        self, command: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None
    ) -> None:
        self.command = list(command)
        full_env = dict(os.environ if env is None else env)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            text=True,
            encoding="utf-8",
        )
        self.lines: List[str] = []
        self._queue: queue.Queue[Optional[str]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url: Optional[str] = None

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first stderr line (new or already seen) that matches `pattern`."""
        regex = re.compile(pattern)
        for line in self.lines:
            match = regex.search(line)
            if match:
                return match
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                line = ""
            if line is None:
                raise AssertionError(
                    f"chatproxy exited ({self.proc.wait()}) before printing {pattern!r}:\n" + "\n".join(self.lines)
                )
            if line:
                self.lines.append(line)
                match = regex.search(line)
                if match:
                    return match
            if time.monotonic() > deadline:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n" + "\n".join(self.lines))

    def wait_started(self, timeout: float = 15.0) -> re.Match[str]:
        match = self.wait_for(STARTUP.pattern, timeout)
        self.url = match.group(1)
        return match

    @property
    def port(self) -> int:
        assert self.url is not None, "wait_started() first"
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `signum`, wait for the exit, and collect the rest of stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.finish(timeout)

    def finish(self, timeout: float = 20.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("chatproxy did not exit in time:\n" + "\n".join(self.lines)) from None
        self._reader.join(5)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish(10)

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        elif not self.proc.stderr or not self.proc.stderr.closed:
            self.finish(10)


def chat(port: int, text: str, model: str = "fake-model", path: str = "/v1/chat/completions") -> dict:
    """One non-streamed chat completion through the proxy with http.client; the decoded reply."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]})
        conn.request("POST", path, body, {"Content-Type": "application/json", "Authorization": "Bearer sk-test"})
        response = conn.getresponse()
        payload = response.read()
        assert response.status == 200, (response.status, payload)
        return json.loads(payload)
    finally:
        conn.close()


# -- other interpreters ----------------------------------------------------------------------


def _reports_version(executable: str, version: Tuple[int, int]) -> bool:
    try:
        out = subprocess.run(
            [executable, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == "%d.%d" % version


def find_python(version: Tuple[int, int]) -> Optional[str]:
    """A working interpreter for `version`: on PATH, or in pyenv's folder (its shims fail for versions not selected)."""
    name = "python%d.%d" % version
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = sorted(glob.glob(os.path.join(pyenv_root, "versions", "%d.%d.*" % version, "bin", name)), reverse=True)
    candidates += [shutil.which(name), f"/usr/bin/{name}", f"/usr/local/bin/{name}"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and _reports_version(candidate, version):
            return candidate
    return None


def other_python(prefer: Tuple[int, int] = (3, 9)) -> Optional[Tuple[Tuple[int, int], str]]:
    """An interpreter other than the running one, `prefer` first (3.9 proves the floor), then the oldest."""
    running = sys.version_info[:2]
    order = [prefer] + [(3, minor) for minor in range(9, 14) if (3, minor) != prefer]
    for version in order:
        if version != running:
            path = find_python(version)
            if path is not None:
                return version, path
    return None
