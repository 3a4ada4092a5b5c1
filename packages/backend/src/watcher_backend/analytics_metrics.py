"""Learning-analytics metrics as pure functions (no SQL): easy to test by hand.

Definitions (also in docs/analytics.md):

* **Time on task**: activity events (saves, builds and other runs, notebook cells) sorted
  by time; the sum over consecutive pairs of ``min(gap, idle)``. A gap longer than the
  idle threshold (default 10 minutes) counts as exactly the threshold: the student was
  probably still working for a while before walking away. One event alone is 0.
* **Error Quotient** (Jadud 2006, "Methods and tools for exploring novice compilation
  behaviour", ICER '06): over consecutive pairs of compiles, a pair scores 8 if both ended
  in error, plus 3 if both errors have the same type; each pair score is divided by 11
  and the pair scores are averaged. These are the weights Jadud's paper settled on (the
  same-line and same-edit-location criteria got weight 0), the form used by later
  replications (e.g. ProgSnap2's cross-dataset study, Price et al. 2020). Error type =
  the normalised template of the compile's *first* error diagnostic (Jadud's BlueJ data
  reported only the first error). Undefined (None) with fewer than two compiles.
* **Repeated Error Density** (Becker 2016, "A New Metric to Quantify Repeated Compiler
  Errors for Novice Programmers", ITiCSE '16): the failed-compile sequence is split into
  strings of consecutive identical errors (same first-error template; a successful
  compile or a different error ends the string). A string of ``n`` identical errors has
  ``r = n - 1`` repeats and contributes ``r² / (r + 1)``; RED is the sum (not normalised,
  as in Becker's definition: 0 with no repeats, 1/2 for one repeat, 4/3 for two).
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_IDLE_S = 600
# Integrity evidence defaults: a save that grew the file by >= 300 bytes less than 30 s
# after the previous save of that file is > 10 bytes/s: faster than sustained typing.
DEFAULT_PASTE_BYTES = 300
DEFAULT_PASTE_SECONDS = 30
# A first save already holding >= 80 % of the file's final size (files >= 200 bytes, so
# that tiny files do not flag).
DEFAULT_FIRST_SAVE_RATIO = 0.8
DEFAULT_FIRST_SAVE_MIN_BYTES = 200
# Time on task below 25 % of the class median (students who started only).
DEFAULT_LOW_ACTIVITY_RATIO = 0.25
# Stuck: at least this many consecutive failed compiles with the same first error.
DEFAULT_STUCK_STREAK = 3

# Signals that mean the program itself failed (not the user or the system stopping it).
CRASH_SIGNALS = frozenset({4, 5, 6, 7, 8, 11, 31})  # ILL TRAP ABRT BUS FPE SEGV SYS

US = 1_000_000


def time_on_task_us(timestamps_us: Iterable[int], idle_us: int = DEFAULT_IDLE_S * US) -> int:
    """Σ min(gap, idle) over consecutive activity times (any order in, sorted here)."""
    ts = sorted(timestamps_us)
    return sum(min(b - a, idle_us) for a, b in itertools.pairwise(ts))


# ---- compile errors -------------------------------------------------------------------

# gcc quotes names with ‘…’ (UTF-8 locale) or '…' (C locale); clang uses '…'.
_QUOTED = re.compile(r"‘[^’]*’|'[^']*'|\"[^\"]*\"|`[^`']*'")
_NUMBER = re.compile(r"\b\d+\b")
_PUNCT_ONLY = re.compile(r"^[^\w\s]{1,3}$")


def error_template(message: str) -> str:
    """A message with its specifics removed, so the same mistake groups together:
    quoted names become ``'…'`` (quoted punctuation such as ``';'`` is kept: it *is* the
    error), numbers become ``N``; the first line only, whitespace collapsed."""
    first = message.strip().splitlines()[0] if message.strip() else ""

    def _quoted(m: re.Match[str]) -> str:
        inner = m.group(0)[1:-1]
        return f"'{inner}'" if _PUNCT_ONLY.match(inner) else "'…'"

    text = _QUOTED.sub(_quoted, first)
    text = _NUMBER.sub("N", text)
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class Compile:
    """One compile, as the metrics need it. ``ok`` None: outcome unknown (still running or
    exit lost) — left out of EQ, RED and the success rate."""

    ts_us: int
    ok: bool | None
    first_error: str | None = None  # template of the first error diagnostic


def known(compiles: Iterable[Compile]) -> list[Compile]:
    return [c for c in compiles if c.ok is not None]


def error_quotient(compiles: Sequence[Compile]) -> float | None:
    """Jadud's EQ (8 + 3, ÷ 11, averaged over consecutive pairs); None under 2 compiles."""
    seq = known(compiles)
    if len(seq) < 2:
        return None
    total = 0.0
    for a, b in itertools.pairwise(seq):
        score = 0
        if not a.ok and not b.ok:
            score += 8
            if a.first_error == b.first_error:
                score += 3
        total += score / 11
    return total / (len(seq) - 1)


def error_strings(compiles: Sequence[Compile]) -> list[tuple[str | None, int]]:
    """Maximal strings of consecutive failed compiles with the same first error:
    ``(template, length)``. A success breaks a string."""
    out: list[tuple[str | None, int]] = []
    current: str | None = None
    length = 0
    for c in known(compiles):
        if c.ok:
            if length:
                out.append((current, length))
            current, length = None, 0
        elif length and c.first_error == current:
            length += 1
        else:
            if length:
                out.append((current, length))
            current, length = c.first_error, 1
    if length:
        out.append((current, length))
    return out


def repeated_error_density(compiles: Sequence[Compile]) -> float:
    """Becker's RED: Σ r²/(r+1) over strings of identical errors, r = length − 1."""
    return sum((n - 1) ** 2 / n for _, n in error_strings(compiles) if n > 1)


def longest_repeat(compiles: Sequence[Compile]) -> tuple[str | None, int]:
    """The longest string of identical failed compiles (template, length); (None, 0)."""
    best: tuple[str | None, int] = (None, 0)
    for tpl, n in error_strings(compiles):
        if n > best[1]:
            best = (tpl, n)
    return best


# ---- integrity evidence ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Save:
    snapshot_id: int
    file_id: int
    ts_us: int
    size: int


@dataclass(frozen=True, slots=True)
class PasteLike:
    snapshot_id: int
    file_id: int
    ts_us: int
    added_bytes: int
    seconds: float


def paste_like(
    saves: Iterable[Save],
    min_bytes: int = DEFAULT_PASTE_BYTES,
    max_seconds: float = DEFAULT_PASTE_SECONDS,
) -> list[PasteLike]:
    """Saves that grew their file by >= ``min_bytes`` within ``max_seconds`` of the
    previous save of the same file."""
    last: dict[int, Save] = {}
    out: list[PasteLike] = []
    for s in sorted(saves, key=lambda s: (s.ts_us, s.snapshot_id)):
        prev = last.get(s.file_id)
        last[s.file_id] = s
        if prev is None:
            continue
        added, dt = s.size - prev.size, (s.ts_us - prev.ts_us) / US
        if added >= min_bytes and dt <= max_seconds:
            out.append(PasteLike(s.snapshot_id, s.file_id, s.ts_us, added, dt))
    return out


def first_save_near_final(
    first_size: int,
    final_size: int,
    ratio: float = DEFAULT_FIRST_SAVE_RATIO,
    min_bytes: int = DEFAULT_FIRST_SAVE_MIN_BYTES,
) -> bool:
    return final_size >= min_bytes and first_size >= ratio * final_size


def low_activity(
    tot_us: int, class_median_us: float | None, ratio: float = DEFAULT_LOW_ACTIVITY_RATIO
) -> bool:
    return class_median_us is not None and class_median_us > 0 and tot_us < ratio * class_median_us


def median(values: Sequence[int]) -> float | None:
    return float(statistics.median(values)) if values else None
