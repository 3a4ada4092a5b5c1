"""The Python decoding layout (events.py) against the C header (bpf/procmon_event.h).

gcc compiles a probe that includes the header and prints sizeof/offsetof of every field
and the value of every shared constant; the test compares them with the ctypes side, and
checks that both sides list the same fields in the same order.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from watcher_procmon import events

HEADER = Path(__file__).resolve().parents[1] / "bpf" / "procmon_event.h"

STRUCTS: dict[str, type[ctypes.Structure]] = {
    "pm_hdr": events.PmHdr,
    "pm_exec": events.PmExec,
    "pm_exit": events.PmExit,
    "pm_stderr": events.PmStderr,
    "pm_config": events.PmConfig,
    "pm_counters": events.PmCounters,
}

CONSTANTS: dict[str, int] = {
    "PM_ABI_VERSION": events.ABI_VERSION,
    "PM_NODENAME_LEN": events.NODENAME_LEN,
    "PM_PREFIX_MAX": events.PREFIX_MAX,
    "PM_ARGV_MAX": events.ARGV_MAX,
    "PM_PATH_MAX": events.PATH_MAX,
    "PM_NAME_MAX": events.NAME_MAX,
    "PM_MAX_DEPTH": events.MAX_DEPTH,
    "PM_EV_EXEC": events.EV_EXEC,
    "PM_EV_EXIT": events.EV_EXIT,
    "PM_F_ARGV_TRUNC": events.F_ARGV_TRUNC,
    "PM_F_ARGV_ERR": events.F_ARGV_ERR,
    "PM_F_FILENAME_TRUNC": events.F_FILENAME_TRUNC,
    "PM_F_EXE_TRUNC": events.F_EXE_TRUNC,
    "PM_F_EXE_UNREACH": events.F_EXE_UNREACH,
    "PM_F_CWD_TRUNC": events.F_CWD_TRUNC,
    "PM_F_CWD_UNREACH": events.F_CWD_UNREACH,
    "PM_F_NOT_TRACKED": events.F_NOT_TRACKED,
    "PM_F_CAPTURE": events.F_CAPTURE,
    "PM_F_TOOL": events.F_TOOL,
    "PM_F_CAPTURE_FULL": events.F_CAPTURE_FULL,
    "PM_EV_STDERR": events.EV_STDERR,
    "PM_TOOL_NAME_LEN": events.TOOL_NAME_LEN,
    "PM_STDERR_CHUNK": events.STDERR_CHUNK,
    "PM_STDERR_BUDGET": events.STDERR_BUDGET,
    "PM_TOOL_NONE": events.TOOL_NONE,
    "PM_TOOL_COMPILER": events.TOOL_COMPILER,
    "PM_TOOL_INTERPRETER": events.TOOL_INTERPRETER,
}
# The kernel's tools bloom filter and tracer.py's must set the same bit for a name.
for _name in (b"gcc", b"cc1plus", b"python3.11", b"x86_64-linux-gnu-gcc-12"):
    CONSTANTS[f"PM_TOOL_BLOOM_BIT({_name[0]},{_name[-1]},{len(_name)})"] = events.tool_bloom_bit(
        _name
    )


def header_fields() -> dict[str, list[str]]:
    """Field names per struct, in order, read from the header text."""
    text = HEADER.read_text()
    out: dict[str, list[str]] = {}
    for name, body in re.findall(r"^struct (pm_\w+) \{\n(.*?)^\};", text, re.M | re.S):
        out[name] = re.findall(r"^\s*(?:struct \w+|__u\d+|char)\s+(\w+)(?:\[\w+\])?;", body, re.M)
    return out


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed for the layout test (scripts/install-deps.sh)"
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "procmon_event.h"', ""]
    lines.append("int main(void)\n{")
    for struct, fields in header_fields().items():
        lines.append(f'\tprintf("{struct} %zu\\n", sizeof(struct {struct}));')
        for f in fields:
            member = f"((struct {struct} *)0)->{f}"
            lines.append(
                f'\tprintf("{struct}.{f} %zu %zu\\n", offsetof(struct {struct}, {f}),'
                f" sizeof({member}));"
            )
    for const in CONSTANTS:
        lines.append(f'\tprintf("{const} %lld\\n", (long long)({const}));')
    lines.append("\treturn 0;\n}")
    tmp = tmp_path_factory.mktemp("layout")
    src, exe = tmp / "probe.c", tmp / "probe"
    src.write_text("\n".join(lines) + "\n")
    cmd = [gcc, "-std=c11", "-Wall", "-Werror", f"-I{HEADER.parent}", str(src), "-o", str(exe)]
    subprocess.run(cmd, check=True)
    out: dict[str, int] = {}
    for line in subprocess.run(
        [str(exe)], check=True, capture_output=True, text=True
    ).stdout.splitlines():
        key, *nums = line.split()
        if len(nums) == 2:
            out[key + ".offset"], out[key + ".size"] = int(nums[0]), int(nums[1])
        else:
            out[key] = int(nums[0])
    return out


def test_header_declares_the_structs_python_decodes() -> None:
    assert set(header_fields()) == set(STRUCTS)


@pytest.mark.parametrize("struct", list(STRUCTS))
def test_struct_layout_matches_header(c_layout: dict[str, int], struct: str) -> None:
    py = STRUCTS[struct]
    assert [f[0] for f in py._fields_] == header_fields()[struct]
    assert ctypes.sizeof(py) == c_layout[struct]
    for name, *_ in py._fields_:
        desc = getattr(py, name)
        got = (desc.offset, desc.size)
        want = (c_layout[f"{struct}.{name}.offset"], c_layout[f"{struct}.{name}.size"])
        assert got == want, f"{struct}.{name}: python (offset, size) {got} != C {want}"


def test_constants_match_header(c_layout: dict[str, int]) -> None:
    for name, value in CONSTANTS.items():
        assert c_layout[name] == value, name
