"""`pneumoscan serve` as a child process on 127.0.0.1, for end-to-end tests and load benchmarks: started the
way a deployment starts it, ready once `/health` answers, stopped on exit. Test scaffolding, not part of the
package: tests import it beside conftest; benchmarks/service_load.py puts tests/ on its path."""

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

from pneumoscan.errors import PneumoscanError


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_service(model: str, extra: Sequence[str] = (), timeout: float = 60.0) -> Iterator[tuple[str, int]]:
    """Yields (base URL, server pid) once the service answers; raises PneumoscanError if it exits or stays silent."""
    import httpx

    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: an unread pipe fills up and blocks the server's logging
    process = subprocess.Popen([sys.executable, "-m", "pneumoscan", "serve", "--model", model, "--port", str(port),
                                *extra], stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                log.seek(0)
                raise PneumoscanError(f"pneumoscan serve exited: {log.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise PneumoscanError(f"pneumoscan serve did not answer /health within {timeout:.0f} s")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
