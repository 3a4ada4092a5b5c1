"""Time conversions shared by agents and backend.

Storage uses integer microseconds since the epoch (UTC); the old API speaks Korea time
(UTC+9, no DST) as ``YYYYMMDD_HHMMSS`` strings or naive ISO strings.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

KST = timezone(timedelta(hours=9), "KST")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(dt: datetime) -> int:
    """Aware datetime → µs since epoch. Naive datetimes are refused (ambiguous)."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime: a timezone is required")
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def now_us() -> int:
    return to_us(datetime.now(UTC))


def kst_compact(us: int) -> str:
    """µs → ``YYYYMMDD_HHMMSS`` in Korea time (the old snapshot timestamp form)."""
    return from_us(us).astimezone(KST).strftime("%Y%m%d_%H%M%S")


def kst_iso_naive(us: int) -> str:
    """µs → ``YYYY-MM-DDTHH:MM:SS`` Korea time without offset (old API's LocalDateTime)."""
    return from_us(us).astimezone(KST).replace(tzinfo=None).isoformat(timespec="seconds")


def parse_kst_compact(text: str) -> datetime:
    """``YYYYMMDD_HHMMSS`` (Korea time) → aware datetime; ValueError if malformed."""
    return datetime.strptime(text, "%Y%m%d_%H%M%S").replace(tzinfo=KST)
