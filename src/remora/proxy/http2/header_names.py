"""Header names between the codec's bytes and the connection manager's str, converted
once per name instead of once per field.

ngh2 hands header blocks over as bytes and takes them as bytes; the connection manager,
router and access log work on str (latin-1, byte for byte, as the HTTP/1.1 side reads
them). Values differ per request and are converted each time; names repeat, so each
direction keeps a table filled as names are met. The tables are bounded (names from the
wire are the peer's choice): past ``MAX_NAMES`` names, or for a name longer than
``MAX_NAME_LENGTH``, a name is converted per field, as without the table (at most about
64 KiB per table).
"""

from __future__ import annotations

MAX_NAMES = 1024
MAX_NAME_LENGTH = 64

# bytes -> str and str -> bytes; the names of every request and response seed them
TO_STR: dict[bytes, str] = {}
TO_BYTES: dict[str, bytes] = {}


def learn_str(name: bytes) -> str:
    """NAME as str, remembered while the table has room (the miss path of ``TO_STR``)."""
    text = name.decode("latin-1")
    if len(TO_STR) < MAX_NAMES and len(name) <= MAX_NAME_LENGTH:
        TO_STR[name] = text
    return text


def learn_bytes(name: str) -> bytes:
    """NAME as bytes, remembered while the table has room (the miss path of
    ``TO_BYTES``)."""
    raw = name.encode("latin-1")
    if len(TO_BYTES) < MAX_NAMES and len(raw) <= MAX_NAME_LENGTH:
        TO_BYTES[name] = raw
    return raw


def encode_fields(fields: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """FIELDS as the codec takes them."""
    to_bytes = TO_BYTES
    return [(to_bytes.get(n) or learn_bytes(n), v.encode("latin-1")) for n, v in fields]


def decode_fields(fields: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    """FIELDS as the connection manager reads them."""
    to_str = TO_STR
    return [(to_str.get(n) or learn_str(n), v.decode("latin-1")) for n, v in fields]
