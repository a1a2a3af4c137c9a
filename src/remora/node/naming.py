"""Names remora gives the kernel objects it creates for the node runtime.

Every network namespace remora creates starts with the lab's prefix (``remora-`` by
default; tests pass a unique one), so `down` can find exactly what it made and two labs,
or a lab and a test run, never collide. Links live inside those namespaces only, so their
names need to be unique per namespace, not per host; they still must fit IFNAMSIZ (15).
"""

from __future__ import annotations

import hashlib
import re
import uuid

DEFAULT_PREFIX = "remora-"
IFNAMSIZ = 15
BRIDGE = "rmbr0"
FABRIC_BRIDGE = "rmfab0"
# The pod end of its veth, as in every Kubernetes pod.
POD_IFNAME = "eth0"
# The node's end of the link into the fabric namespace.
NODE_UPLINK = "eth0"

_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,19}$")


def check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix):
        from remora.errors import UsageError

        raise UsageError(
            f"node prefix {prefix!r} is not usable in namespace names",
            "use 1-20 lowercase letters, digits or '-', starting with a letter or digit",
        )
    return prefix


def short_hash(*parts: str, length: int = 10) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return digest[:length]


def node_name(prefix: str, index: int) -> str:
    """Node N (1-based) is the namespace ``<prefix>node-N``."""
    return f"{prefix}node-{index}"


def fabric_name(prefix: str) -> str:
    """The namespace holding the bridge that joins the nodes (the 'physical' network)."""
    return f"{prefix}fabric"


def pod_netns(prefix: str, uid: str) -> str:
    """A pod's namespace, derived from its uid so a re-created pod never reuses one."""
    return f"{prefix}pod-{short_hash(uid)}"


def pod_veth(uid: str) -> str:
    """The node-side end of a pod's veth (lives in the node namespace, on the bridge)."""
    return f"veth{short_hash(uid, length=8)}"


def fabric_veth(node_index: int) -> str:
    """The fabric-side end of node N's uplink."""
    return f"node{node_index}"


def is_ours(prefix: str, netns_name: str) -> bool:
    return netns_name.startswith(prefix) and (
        netns_name.startswith(f"{prefix}node-")
        or netns_name.startswith(f"{prefix}pod-")
        or netns_name == fabric_name(prefix)
    )


def pod_template_hash(template_json: str) -> str:
    """Like the pod-template-hash label of a ReplicaSet: stable for one template."""
    return short_hash(template_json, length=10)


_ALNUM = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' rand.String alphabet (no vowels)


def pod_suffix(seed: str) -> str:
    """The 5-character random-looking suffix of a Deployment's pod names."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_ALNUM[b % len(_ALNUM)] for b in digest[:5])


def chain_hash(*parts: str) -> str:
    """kube-proxy's chain suffix: base32 of a SHA-256 over the parts, 16 characters."""
    import base64

    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


_UID_NAMESPACE = uuid.UUID("5f1d3a0e-6b7c-4c8e-9a51-72656d6f7261")


def object_uid(kind: str, namespace: str, name: str, created: object) -> str:
    """The uid the Kubernetes API serves for a stored object that has none of its own (a
    Deployment, a Service, the derived ReplicaSets): the same on every read, a new one
    when the object is deleted and created again (its creation time differs), as an
    apiserver's uid. Here so that the node's event recorder names the same uid in an
    event's involvedObject as the API shows on the object (kubectl describe selects the
    events by it)."""
    return str(uuid.uuid5(_UID_NAMESPACE, f"{kind}/{namespace}/{name}/{created}"))
