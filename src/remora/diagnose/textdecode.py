"""Bytes of a saved evidence file as text, the way users really save them.

Shared by `explain source-ip` and `proxy-config --file` so both accept the same files:
- a UTF-8 byte-order mark (Windows editors, PowerShell's `Out-File -Encoding utf8`);
- UTF-16 with its BOM: Windows PowerShell 5's `>` redirection writes `kubectl` /
  `istioctl` output as UTF-16LE (its Out-File default), so a dump saved there is UTF-16;
- gzip (`istioctl ... | gzip > config_dump.json.gz`, or a support bundle's `.gz`).
"""

from __future__ import annotations

import gzip
import zlib

from remora.errors import RemoraError


def decode_evidence(data: bytes, name: str) -> str:
    """The text of a file's bytes; RemoraError for a gzip stream that is cut off."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise RemoraError(f"{name} is gzip-compressed but cannot be decompressed ({exc})",
                              "give the file uncompressed, or a whole .gz") from exc
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16", errors="replace")
    if data[:3] == b"\xef\xbb\xbf":
        return data[3:].decode("utf-8", errors="replace")
    return data.decode("utf-8", errors="replace")
