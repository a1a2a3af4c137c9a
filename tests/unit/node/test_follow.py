from __future__ import annotations

import threading
import time
from pathlib import Path

from remora.node.client import follow


def test_follow_reads_appends_and_the_next_file_after_a_restart(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    log.write_bytes(b"one\n")
    got: list[bytes] = []

    def reader() -> None:
        for chunk in follow(log, poll=0.01):
            got.append(chunk)
            if b"three" in b"".join(got):
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(0.05)
    with open(log, "ab") as f:
        f.write(b"two\n")
    time.sleep(0.05)
    # a restart moves the log aside and starts a new file
    log.replace(tmp_path / "demo.previous.log")
    log.write_bytes(b"three\n")
    thread.join(timeout=5)
    assert b"".join(got) == b"one\ntwo\nthree\n"
