"""Writing a SidecarConfig to disk the way Envoy's file watcher expects it.

Envoy reloads a path-based xDS file when it is moved into place (inotify MOVED_TO), so
each file is written to a temporary name in the same directory and renamed over the old
one: a reader never sees half a file. Files whose content is unchanged are left alone
(no spurious reloads). Order matters as it does for ADS: endpoints first, then clusters,
then listeners, so nothing refers to what does not exist yet; EDS files of clusters that
are gone are removed last.
https://www.envoyproxy.io/docs/envoy/latest/configuration/overview/xds_api#filesystem-subscriptions
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from remora.controlplane.generate import SidecarConfig


def _order(name: str) -> int:
    if name.startswith(("eds/", "sds/")):  # secrets too: listeners and clusters name them
        return 0
    return {"cds.json": 1, "lds.json": 2, "bootstrap.json": 3}.get(name, 4)


def write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` by rename; False when the file already holds it."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # the sidecar (uid 1337) must be able to read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def write_config(config: SidecarConfig, directory: str | Path | None = None) -> list[str]:
    """Write every file of ``config``; returns the relative names that changed."""
    root = Path(directory if directory is not None else config.config_dir)
    changed = []
    for name in sorted(config.files, key=lambda n: (_order(n), n)):
        data = (json.dumps(config.files[name], indent=2) + "\n").encode()
        if write_atomic(root / name, data):
            changed.append(name)
    eds_dir = root / "eds"
    if eds_dir.is_dir():
        for stale in eds_dir.glob("*.json"):
            if f"eds/{stale.name}" not in config.files:
                stale.unlink()
                changed.append(f"eds/{stale.name}")
    return changed
