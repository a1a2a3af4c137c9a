"""x-request-id values (headers.uuid4): random version-4 UUIDs in the canonical text form,
as Envoy's UUID request-id extension generates them, drawn from batches."""

from __future__ import annotations

import uuid

from remora.proxy.http import headers


def test_generated_request_ids_are_distinct_version_4_uuids_across_batches() -> None:
    seen: set[str] = set()
    for _ in range(3 * 256 + 7):  # several batches and part of one more
        text = headers.uuid4()
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case, 8-4-4-4-12
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        seen.add(text)
    assert len(seen) == 3 * 256 + 7


def test_every_digit_position_varies() -> None:
    """Each of the 32 hex digits comes from the random bytes (no position stuck at the
    batch template's zero), except the version digit."""
    ids = [headers.uuid4().replace("-", "") for _ in range(512)]
    for pos in range(32):
        values = {i[pos] for i in ids}
        if pos == 12:
            assert values == {"4"}
        elif pos == 16:
            assert values <= set("89ab") and len(values) > 1
        else:
            assert len(values) > 4, pos
