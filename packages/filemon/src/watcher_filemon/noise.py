"""Which names are editor/tool noise, which directories are never watched, which files count.

Noise names (vim's ``4913`` probe and ``name~`` backup, swap files, Jupyter's ``.~name``,
``sedXXXXXX``, gedit's ``.goutputstream-*``, JetBrains temp names, …) are never stored;
the capture layer still sees their events so that "rename the original to a noise name,
then write a new file at the old name" pairs up as one save instead of delete + create.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# Directories whose whole subtree is tool output or third-party code: never watched.
NOISE_DIRS: frozenset[str] = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        ".ipynb_checkpoints",
        ".venv",
        "venv",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".cache",
        ".npm",
        ".gradle",
    }
)

# A directory holding this file is a virtualenv, whatever its name.
VENV_MARKER = "pyvenv.cfg"

_NOISE_RE = re.compile(
    r"""^(?:
        \d+                         # vim's write probe: 4913, 5036, … (digits only)
      | .*~                         # vim/emacs/nano -B backups
      | \..*\.sw[a-p]               # vim swap files (.name.swp … .name.swa)
      | \.~.*                       # Jupyter atomic-save copy, LibreOffice locks
      | \.\#.*                      # emacs lock links
      | \#.*\#                      # emacs auto-save
      | .*\.vsctmp                  # VS Code
      | sed[A-Za-z0-9]{6}           # sed -i temp file (same directory)
      | \.goutputstream-.*          # gedit / GIO
      | .*___jb_(?:tmp|old)___      # JetBrains safe write
      | .*\.(?:swp|swx|tmp|temp|bak|orig|part|crdownload)
      | \.nfs[0-9a-fA-F]+           # NFS silly-rename of an open, deleted file
      | \.watcher-.*                # our own hidden files (e.g. the ipynb cell log)
    )$""",
    re.VERBOSE | re.DOTALL,
)

DEFAULT_EXTENSIONS: frozenset[str] = frozenset(
    [
        "c",
        "h",
        "cpp",
        "cc",
        "cxx",
        "c++",
        "hpp",
        "hh",
        "hxx",
        "inl",
        "ipp",
        "py",
        "pyi",
        "ipynb",
        "java",
        "js",
        "mjs",
        "cjs",
        "ts",
        "tsx",
        "jsx",
        "vue",
        "go",
        "rs",
        "sh",
        "bash",
        "zsh",
        "fish",
        "kt",
        "kts",
        "scala",
        "sc",
        "rb",
        "php",
        "cs",
        "fs",
        "swift",
        "sql",
        "r",
        "rmd",
        "m",
        "mm",
        "ml",
        "mli",
        "hs",
        "lua",
        "pl",
        "pm",
        "txt",
        "md",
        "rst",
        "json",
        "yaml",
        "yml",
        "toml",
        "ini",
        "cfg",
        "conf",
        "xml",
        "html",
        "htm",
        "css",
        "scss",
        "s",
        "asm",
        "v",
        "sv",
        "vhd",
        "vhdl",
        "dart",
        "jl",
        "ex",
        "exs",
        "erl",
        "clj",
        "lisp",
        "scm",
        "rkt",
        "f",
        "f90",
        "f95",
        "pas",
        "d",
        "nim",
        "zig",
        "cmake",
        "mk",
        "gradle",
        "tex",
        "csv",
        "tsv",
    ]
)

DEFAULT_FILENAMES: frozenset[str] = frozenset(
    {
        "Makefile",
        "makefile",
        "GNUmakefile",
        "CMakeLists.txt",
        "Dockerfile",
        "Containerfile",
        "Vagrantfile",
        "Rakefile",
        "Gemfile",
        "Pipfile",
        "Jenkinsfile",
        "Procfile",
        ".gitignore",
        "requirements.txt",
    }
)


def is_noise_name(name: str) -> bool:
    """Editor/tool temporary or backup file: used for pairing, never stored."""
    return bool(_NOISE_RE.match(name))


def is_noise_dir(name: str) -> bool:
    return name in NOISE_DIRS


def is_venv(abs_dir: str) -> bool:
    try:
        return os.path.isfile(os.path.join(abs_dir, VENV_MARKER))
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class FileFilter:
    """Decides from the file name alone whether a file is a source file worth keeping."""

    extensions: frozenset[str] = DEFAULT_EXTENSIONS
    filenames: frozenset[str] = DEFAULT_FILENAMES
    _lower_ext: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lower_ext", frozenset(e.lower() for e in self.extensions))

    @classmethod
    def from_lists(
        cls, extensions: Iterable[str] | None, filenames: Iterable[str] | None
    ) -> FileFilter:
        ext = (
            DEFAULT_EXTENSIONS
            if extensions is None
            else frozenset(e.strip().lstrip(".") for e in extensions if e.strip())
        )
        names = (
            DEFAULT_FILENAMES
            if filenames is None
            else frozenset(n.strip() for n in filenames if n.strip())
        )
        return cls(ext, names)

    def reason_skipped(self, name: str) -> str | None:
        """None if the file is tracked, else a bounded reason ("noise" or "extension")."""
        if is_noise_name(name):
            return "noise"
        if name in self.filenames:
            return None
        _, dot, ext = name.rpartition(".")
        if dot and _ and ext.lower() in self._lower_ext:
            return None
        return "extension"

    def tracked(self, name: str) -> bool:
        return self.reason_skipped(name) is None
