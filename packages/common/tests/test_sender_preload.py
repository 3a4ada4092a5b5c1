"""preload_transport() leaves nothing for the first request to import (a fresh process:
this one may have imported them already)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import asyncio, socket, sys
import httpx
from watcher_common.sender import preload_transport
preload_transport()
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
before = set(sys.modules)
async def main():
    async with httpx.AsyncClient() as c:
        try:
            await c.post(f"http://127.0.0.1:{port}/", content=b"{}")
        except httpx.ConnectError:
            pass
asyncio.run(main())
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_first_request_after_preload_imports_nothing() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []
