"""Extract the uncompressed vmlinux ELF (with its .BTF section) from a kernel image.

Used by packages/procmon/Dockerfile: a ``docker build`` cannot read the build host's
/sys/kernel/btf/vmlinux reliably, so the builder generates vmlinux.h from the BTF of
Debian bookworm's own kernel package instead (reproducible; CO-RE relocates the object
to whatever BTF kernel it later runs on).

    python3 extract-vmlinux.py boot/vmlinuz-6.1.0-NN-amd64 /tmp/vmlinux

The kernel image is a boot stub followed by a compressed payload (xz for Debian amd64,
gzip for arm64's Image.gz, possibly zstd); the payload is found by its magic bytes and
decompressed until an ELF header appears. stdlib only.
"""

from __future__ import annotations

import gzip
import lzma
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b\x08"


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor().decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


DECODERS: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
    (XZ_MAGIC, _xz),
    (GZIP_MAGIC, _gzip),
)


def extract(image: bytes) -> bytes:
    """The first ELF found: the image itself, or a decompressed payload inside it."""
    if image.startswith(ELF_MAGIC):
        return image
    for magic, decode in DECODERS:
        start = image.find(magic)
        while start != -1:
            try:
                out = decode(image[start:])
            except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, EOFError):
                out = b""
            if out.startswith(ELF_MAGIC):
                return out
            start = image.find(magic, start + 1)
    raise ValueError("no xz/gzip-compressed ELF payload found in the kernel image")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: extract-vmlinux.py VMLINUZ OUT", file=sys.stderr)
        return 2
    elf = extract(Path(argv[1]).read_bytes())
    Path(argv[2]).write_bytes(elf)
    print(f"extract-vmlinux: {argv[1]} -> {argv[2]} ({len(elf)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
