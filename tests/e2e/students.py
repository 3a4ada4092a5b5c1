"""Simulated students: each one a "pod" made of its own UTS, PID and mount namespaces
(``unshare --uts --pid --mount --fork --mount-proc``, as procmon's own tests do), hostname
``jcode-<subject>-<div>-<id>-<rs>-<pod>``, the workspace ``WATCH_ROOT/<subject>-<div>-<id>``
bind-mounted at ``/home/coder/project`` on a tmpfs ``/home`` that only that namespace sees.

The namespace is held open by a ``sleep`` (pid 1 inside); every step of a session is a
command run in it with ``nsenter`` (the way ``kubectl exec`` enters a pod), so procmon sees
the student's hostname, pid namespace and container paths.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = "/home/coder/project"

_HOLD = (
    "set -e\n"
    'hostname "$1"\n'
    "mount -t tmpfs tmpfs /home\n"
    f"mkdir -p {PROJECT}\n"
    f'mount --bind "$2" {PROJECT}\n'
    "echo ready\n"
    "exec sleep infinity\n"
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Student:
    subject: str
    division: str
    student_id: str
    watch_root: Path
    rs: str = "7d9f8b6c5"
    pod: str = "x2kqz"
    holder: subprocess.Popen[bytes] | None = None
    ns_pid: int = 0
    # what the test saved, per (assignment, path), in order
    saved: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)

    @property
    def workspace(self) -> str:
        return f"{self.subject}-{self.division}-{self.student_id}"

    @property
    def class_div(self) -> str:
        return f"{self.subject}-{self.division}"

    @property
    def hostname(self) -> str:
        return f"jcode-{self.workspace}-{self.rs}-{self.pod}"

    @property
    def ws(self) -> Path:
        return self.watch_root / self.workspace

    def start(self) -> None:
        self.ws.mkdir(parents=True, exist_ok=True)
        self.holder = subprocess.Popen(
            ["unshare", "--uts", "--pid", "--mount", "--fork", "--mount-proc",
             "sh", "-c", _HOLD, "sh", self.hostname, str(self.ws)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        assert line == b"ready\n", f"student namespace did not start: {line!r}"
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children")
        self.ns_pid = int(children.read_text().split()[0])

    def stop(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            # killing the namespace's pid 1 kills everything inside it
            os.kill(self.ns_pid, signal.SIGKILL)
            self.holder.wait(10)
        if self.holder is not None and self.holder.stdout is not None:
            self.holder.stdout.close()

    # ---- running things inside the pod --------------------------------------------------

    def run(
        self, argv: list[str], cwd: str = "hw1", timeout: float = 60.0
    ) -> subprocess.CompletedProcess[bytes]:
        """``argv`` inside the pod, in ``/home/coder/project/<cwd>``; returncode < 0 is a
        signal (nsenter re-raises its child's). ``nsenter --wd`` resolves the directory
        before entering the mount namespace, so a shell changes directory and then execs
        ``argv`` in place (same pid: procmon sees the shell, then the program)."""
        wd = f"{PROJECT}/{cwd}" if cwd else PROJECT
        return subprocess.run(
            ["nsenter", "-t", str(self.ns_pid), "-u", "-p", "-m", "--",
             "sh", "-c", 'cd "$0" && exec "$@"', wd, *argv],
            capture_output=True,
            timeout=timeout,
        )  # fmt: skip

    def sh(self, script: str, *args: str, cwd: str = "hw1") -> None:
        out = self.run(["sh", "-c", script, "sh", *args], cwd=cwd)
        assert out.returncode == 0, out.stderr.decode(errors="replace")

    def _record(self, hw: str, path: str, data: bytes) -> None:
        self.saved.setdefault((hw, path), []).append(data)

    @staticmethod
    def _staged(data: bytes) -> str:
        """The bytes in a file under /tmp (shared with the pod), for the pod's tools."""
        fd, name = tempfile.mkstemp(prefix="e2e-src-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return name

    # ---- editors ------------------------------------------------------------------------

    def vim_save(self, path: str, data: bytes, hw: str = "hw1") -> None:
        """Real vim (no vimrc: write-backup on, backupcopy=auto): replace the lines, :wq."""
        assert data.endswith(b"\n")
        lines = data.decode().rstrip("\n").split("\n")
        vim_list = "[" + ",".join("'" + ln.replace("'", "''") + "'" for ln in lines) + "]"
        out = self.run(
            ["vim", "-Es", "-u", "NONE", "-i", "NONE", "-N", "-c", "silent! %d _",
             "-c", f"call setline(1, {vim_list})", "-c", "wq", path],
            cwd=hw,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert (self.ws / hw / path).read_bytes() == data
        self._record(hw, path, data)

    def nano_save(self, path: str, lines: list[str], hw: str = "hw1") -> None:
        """Real nano in a tmux session inside the pod: type the lines, ^O Enter, ^X."""
        sock = f"e2e-{self.student_id}-{os.getpid()}"
        target = self.ws / hw / path
        data = "".join(line + "\n" for line in lines).encode()
        self.run(
            ["tmux", "-L", sock, "new-session", "-d", "-s", "ed", "-x", "160", "-y", "40",
             "env", "TERM=xterm", "nano", "--ignorercfiles", path],
            cwd=hw,
        )  # fmt: skip

        def tmux(*a: str) -> None:
            subprocess.run(["tmux", "-L", sock, *a], check=True, capture_output=True, timeout=10)

        try:
            _wait_pane(sock, "GNU nano")
            for i, line in enumerate(lines):
                if i:
                    tmux("send-keys", "-t", "ed", "Enter")
                tmux("send-keys", "-t", "ed", "-l", line)  # nano adds the final newline
            tmux("send-keys", "-t", "ed", "C-o")
            _wait_pane(sock, "File Name to Write")
            tmux("send-keys", "-t", "ed", "Enter")
            deadline = time.monotonic() + 15
            while not (target.exists() and target.read_bytes() == data):
                assert time.monotonic() < deadline, f"nano never wrote {path}"
                time.sleep(0.05)
            tmux("send-keys", "-t", "ed", "C-x")
        finally:
            subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True, timeout=10)
        self._record(hw, path, data)

    def vscode_save(self, path: str, data: bytes, hw: str = "hw1") -> None:
        """code-server's fs.writeFile: open(O_TRUNC) then write, in place."""
        src = self._staged(data)
        try:
            self.sh('cat "$1" > "$2"', src, path, cwd=hw)
        finally:
            os.unlink(src)
        self._record(hw, path, data)

    def jupyter_save(self, path: str, data: bytes, hw: str = "hw1") -> None:
        """An atomic save: the new content goes to a hidden ``.~`` file, fsynced, then
        renamed over the notebook (one rename, never a torn file)."""
        src = self._staged(data)
        try:
            self.sh('cp "$1" ".~$2" && sync ".~$2" && mv -f ".~$2" "$2"', src, path, cwd=hw)
        finally:
            os.unlink(src)
        self._record(hw, path, data)


def _wait_pane(sock: str, text: str, within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        out = subprocess.run(
            ["tmux", "-L", sock, "capture-pane", "-p", "-t", "ed"], capture_output=True, timeout=10
        )
        if text in out.stdout.decode(errors="replace"):
            return
        assert time.monotonic() < deadline, f"tmux pane never showed {text!r}: {out.stdout!r}"
        time.sleep(0.05)
