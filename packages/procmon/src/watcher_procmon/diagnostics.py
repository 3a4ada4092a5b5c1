"""Compiler stderr: chunks per build -> text -> structured gcc / clang / javac diagnostics."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

from watcher_common.wire import MAX_DIAGNOSTICS, Diagnostic
from watcher_procmon.events import StderrEvent

MAX_MESSAGE = 8192
MAX_OPEN_BUILDS = 1024  # builds whose driver's end never arrived are forgotten, oldest first

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# gcc / clang: "file:line:col: severity: message" (col optional: gcc -fno-show-column)
_CC = re.compile(
    r"^(?P<file>[^:\n]+):(?P<line>\d+):(?:(?P<col>\d+):)? "
    r"(?P<sev>fatal error|error|warning|note): (?P<msg>.*)$"
)
# javac: "File.java:12: error: message", then the source line and a caret line
_JAVAC = re.compile(r"^(?P<file>[^:\n]+\.java):(?P<line>\d+): (?P<sev>error|warning): (?P<msg>.*)$")
# no position: "collect2: error: ld returned 1 exit status", "error: file not found: X.java"
_BARE = re.compile(r"^(?:(?P<file>[^:\n ]+): )?(?P<sev>fatal error|error|warning): (?P<msg>.*)$")
# the linker: "hello.c:(.text+0x13): undefined reference to `foo'"
_LD = re.compile(r"^(?P<file>[^:\n]+):\(\.[^)]*\): (?P<msg>.*)$")
_CARET = re.compile(r"^\s*\^")

_SEVERITY = {"fatal error": "fatal", "error": "error", "warning": "warning", "note": "note"}


def _diag(file: str, line: str | None, col: str | None, sev: str, msg: str) -> Diagnostic:
    return Diagnostic(
        file=file[:4096],
        line=int(line) if line else None,
        column=int(col) if col else None,
        severity=_SEVERITY[sev],
        message=msg.strip()[:MAX_MESSAGE],
    )


def parse(text: str) -> list[Diagnostic]:
    """gcc, clang and javac diagnostics in the order printed (at most MAX_DIAGNOSTICS)."""
    lines = _ANSI.sub("", text).splitlines()
    out: list[Diagnostic] = []
    for i, ln in enumerate(lines):
        if len(out) >= MAX_DIAGNOSTICS:
            break
        if m := _JAVAC.match(ln):
            col = None
            # javac shows the source line, then "^" under the column
            if i + 2 < len(lines) and _CARET.match(lines[i + 2]):
                col = str(lines[i + 2].index("^") + 1)
            out.append(_diag(m["file"], m["line"], col, m["sev"], m["msg"]))
        elif m := _CC.match(ln):
            out.append(_diag(m["file"], m["line"], m["col"], m["sev"], m["msg"]))
        elif m := _LD.match(ln):
            out.append(_diag(m["file"], None, None, "error", m["msg"]))
        elif m := _BARE.match(ln):
            # "collect2: error: ..." names a tool, not a file
            file = m["file"] or ""
            out.append(_diag(file if "." in file else "", None, None, m["sev"], m["msg"]))
    return out


@dataclass
class _Build:
    first_ns: int
    streams: dict[int, list[bytes]] = field(default_factory=dict)  # per writer, in order
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class BuildOutput:
    text: str
    truncated: bool  # some write was cut (chunk or per-build budget in the kernel)
    diagnostics: list[Diagnostic]


class StderrCollector:
    """Gathers a build's stderr chunks until its driver ends.

    Each writer's (driver, cc1, as, ld ...) bytes are kept as its own stream and the streams
    joined in order of first write, so concurrent writers never splice mid-line.
    """

    def __init__(self, max_open: int = MAX_OPEN_BUILDS) -> None:
        self._builds: OrderedDict[int, _Build] = OrderedDict()
        self._max_open = max_open
        self.forgotten = 0

    def __len__(self) -> int:
        return len(self._builds)

    def add(self, ev: StderrEvent) -> None:
        b = self._builds.get(ev.build_tgid)
        if b is None:
            if len(self._builds) >= self._max_open:
                self._builds.popitem(last=False)
                self.forgotten += 1
            b = self._builds[ev.build_tgid] = _Build(ev.ts_ns)
        b.streams.setdefault(ev.tgid, []).append(ev.data)
        b.truncated |= ev.truncated

    def finish(self, build_tgid: int) -> BuildOutput | None:
        """The build's output once its driver has ended; None if it wrote nothing."""
        b = self._builds.pop(build_tgid, None)
        if b is None:
            return None
        text = "".join(b"".join(chunks).decode("utf-8", "replace") for chunks in b.streams.values())
        return BuildOutput(text, b.truncated, parse(text))
