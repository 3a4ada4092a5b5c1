"""What an exec'd program is (compiler, interpreter, build tool, student binary) and which
source files, output and module its argv names.

Tools are recognised by the basename of the resolved exe (falling back to argv[0] and the
exec'd filename), so /usr/local, pyenv, conda or Debian's x86_64-linux-gnu-gcc-12 all work:
a target-triplet prefix and a version suffix are stripped first.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["compiler", "interpreter", "buildtool", "toolchain", "student", "other"]
RunKind = Literal["build", "run", "interpreter", "buildtool", "other"]

_RUN_KIND: dict[Kind, RunKind] = {
    "compiler": "build",
    "interpreter": "interpreter",
    "buildtool": "buildtool",
    "toolchain": "other",
    "student": "run",
    "other": "other",
}

# canonical tool -> kind; alternations below list the longest names first
COMPILERS = ("clang++", "clang", "g++", "gcc", "c++", "cc", "javac")
INTERPRETERS = ("python", "java", "node")
BUILD_TOOLS = ("cmake", "make")

_TRIPLET = r"(?:[a-z0-9_]+-(?:[a-z0-9_]+-)?(?:linux|w64|apple|none|elf|unknown)[a-z0-9_.-]*?-)?"
_VERSION = r"(?:-?\d+(?:\.\d+)*[a-z]?)?"
_TOOL_RE = re.compile(
    rf"^{_TRIPLET}(?P<tool>clang\+\+|clang|g\+\+|gcc|c\+\+|cc|javac|cmake|make|gmake"
    rf"|python|java|nodejs|node){_VERSION}$"
)
_ALIASES = {"gmake": "make", "nodejs": "node"}
# gcc's internal passes: children of the driver, part of its build
_TOOLCHAIN_RE = re.compile(
    rf"^{_TRIPLET}(?P<tool>cc1plus|cc1|collect2|lto-wrapper|as|ld(?:\.bfd|\.gold)?)$"
)

C_SOURCES = (".c", ".cc", ".cpp", ".cxx", ".c++", ".cp", ".C", ".i", ".ii", ".s", ".S", ".m")
HEADERS = (".h", ".hh", ".hpp", ".hxx")
# options of the gcc/clang driver whose value is the next argument
_CC_ARG_OPTS = frozenset(
    ("-o", "-I", "-L", "-D", "-U", "-include", "-imacros", "-isystem", "-iquote", "-idirafter",
     "-x", "-MF", "-MT", "-MQ", "-T", "-u", "-e", "-Xlinker", "-Xassembler", "-Xpreprocessor",
     "-Xclang", "-arch", "-target", "--target", "-aux-info")
)  # fmt: skip
_JAVAC_ARG_OPTS = frozenset(
    ("-cp", "-classpath", "--class-path", "-sourcepath", "--source-path", "-d", "-s", "-h",
     "-encoding", "--release", "-source", "--source", "-target", "--target", "-processorpath",
     "--processor-path", "-p", "--module-path", "--module-source-path", "--add-modules",
     "-processor", "-implicit")
)  # fmt: skip
_PY_ARG_OPTS = frozenset(("-W", "-X", "--check-hash-based-pycs"))
_JAVA_ARG_OPTS = frozenset(("-cp", "-classpath", "--class-path", "-p", "--module-path"))
_NODE_ARG_OPTS = frozenset(("-r", "--require", "--import", "--loader", "--experimental-loader"))

DEFAULT_WORKSPACE_ROOTS = ("/home/coder/project", "/workspace")


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    tool: str  # canonical: "gcc", "g++", "python", ..., "binary" (student), or the basename
    sources: tuple[str, ...] = ()  # as written in argv (relative to the process's cwd)
    output: str | None = None  # -o (compilers) / -d (javac)
    module: str | None = None  # python -m
    inline_code: bool = False  # python -c / node -e: the code is in argv itself

    @property
    def run_kind(self) -> RunKind:
        return _RUN_KIND[self.kind]


def tool_name(path: str) -> str | None:
    """The canonical tool a basename names, or None: "x86_64-linux-gnu-gcc-12" -> "gcc"."""
    base = posixpath.basename(path)
    if _TOOLCHAIN_RE.match(base):
        return None
    m = _TOOL_RE.match(base)
    if not m:
        return None
    tool = m.group("tool")
    return _ALIASES.get(tool, tool)


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _cc(argv: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    sources: list[str] = []
    output: str | None = None
    args = iter(argv[1:])
    for a in args:
        if a == "-o":
            output = next(args, None)
        elif a.startswith("-o") and len(a) > 2:
            output = a[2:]
        elif a in _CC_ARG_OPTS:
            next(args, None)
        elif not a.startswith("-") and a.endswith(C_SOURCES + HEADERS):
            sources.append(a)
    return tuple(sources), output


def _javac(argv: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    sources: list[str] = []
    output: str | None = None
    args = iter(argv[1:])
    for a in args:
        if a == "-d":
            output = next(args, None)
        elif a in _JAVAC_ARG_OPTS:
            next(args, None)
        elif not a.startswith(("-", "@")) and a.endswith(".java"):
            sources.append(a)
    return tuple(sources), output


def _python(argv: Sequence[str]) -> Classification:
    args = iter(argv[1:])
    for a in args:
        if a == "-m":
            return Classification("interpreter", "python", module=next(args, None))
        if a.startswith("-m") and len(a) > 2:
            return Classification("interpreter", "python", module=a[2:])
        if a == "-c" or (a.startswith("-c") and len(a) > 2):
            return Classification("interpreter", "python", inline_code=True)
        if a in _PY_ARG_OPTS:
            next(args, None)
        elif a == "-":
            break  # script on stdin
        elif not a.startswith("-"):
            return Classification("interpreter", "python", sources=(a,))
    return Classification("interpreter", "python")


def _java(argv: Sequence[str]) -> Classification:
    args = iter(argv[1:])
    for a in args:
        if a == "-jar":
            jar = next(args, None)
            return Classification("interpreter", "java", sources=(jar,) if jar else ())
        if a in _JAVA_ARG_OPTS:
            next(args, None)
        elif not a.startswith("-"):
            # "java Main.java" runs a source file; "java Main" a compiled class
            if a.endswith(".java"):
                return Classification("interpreter", "java", sources=(a,))
            return Classification("interpreter", "java", module=a)
    return Classification("interpreter", "java")


def _node(argv: Sequence[str]) -> Classification:
    args = iter(argv[1:])
    for a in args:
        if a in ("-e", "--eval", "-p", "--print"):
            return Classification("interpreter", "node", inline_code=True)
        if a in _NODE_ARG_OPTS:
            next(args, None)
        elif not a.startswith("-"):
            return Classification("interpreter", "node", sources=(a,))
    return Classification("interpreter", "node")


def classify(
    exe: str,
    argv: Sequence[str],
    filename: str = "",
    workspace_roots: Sequence[str] = DEFAULT_WORKSPACE_ROOTS,
) -> Classification:
    """Classify one exec. ``exe`` is the resolved path as seen in the container."""
    base = posixpath.basename(exe or filename or (argv[0] if argv else ""))
    if m := _TOOLCHAIN_RE.match(base):  # before the name match: "cc1" is not cc version 1
        return Classification("toolchain", m.group("tool"))
    tool = None
    for candidate in (exe, argv[0] if argv else "", filename):
        if candidate and (tool := tool_name(candidate)):
            break
    if tool in ("gcc", "g++", "cc", "c++", "clang", "clang++"):
        sources, output = _cc(argv)
        return Classification("compiler", tool, sources=sources, output=output)
    if tool == "javac":
        sources, output = _javac(argv)
        return Classification("compiler", tool, sources=sources, output=output)
    if tool == "python":
        return _python(argv)
    if tool == "java":
        return _java(argv)
    if tool == "node":
        return _node(argv)
    if tool in BUILD_TOOLS:
        return Classification("buildtool", tool)
    if exe and _under(exe, workspace_roots):
        return Classification("student", "binary")
    return Classification("other", base or "other")
