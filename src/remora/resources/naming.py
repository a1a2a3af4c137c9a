"""Pod names as a Deployment's ReplicaSet gives them: NAME-<template hash>-<5 chars>.

Kubernetes hashes the pod template with FNV-32a (controller.ComputeHash over a
deterministic dump of the template) and encodes the decimal value with
rand.SafeEncodeString, whose alphabet has no vowels and no confusable characters; the
pod suffix is five random characters of the same alphabet (utilrand.String(5)). Hence
names like ``simple-server-86b499d4dd-zd4pl``. remora hashes the template's canonical
JSON instead of Go's spew dump, so the values differ from a real cluster's, but a
changed template (a patch) gives a new hash and new pods, as there.
Source: k8s.io/kubernetes/pkg/controller/controller_utils.go ComputeHash,
k8s.io/apimachinery/pkg/util/rand/rand.go.
"""

from __future__ import annotations

import json
import random

from remora.resources.objects import Deployment, ObjectMeta, Pod, PodTemplate

ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(s: str) -> str:
    return "".join(ALPHANUMS[ord(c) % len(ALPHANUMS)] for c in s)


def template_hash(template: PodTemplate, collision_count: int = 0) -> str:
    """The pod-template-hash label value of a template."""
    data = json.dumps(template.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    h = fnv32a(data)
    if collision_count:
        # ComputeHash adds the collision count to the hash input the same way.
        h = fnv32a(data + str(collision_count).encode())
    return safe_encode(str(h))


def random_suffix(rng: random.Random | None = None, n: int = 5) -> str:
    r = rng or random.SystemRandom()
    return "".join(r.choice(ALPHANUMS) for _ in range(n))


def pod_name(deployment: Deployment, rng: random.Random | None = None) -> str:
    """A fresh pod name for the Deployment's current template."""
    return f"{replicaset_name(deployment)}-{random_suffix(rng)}"


def replicaset_name(deployment: Deployment) -> str:
    return f"{deployment.metadata.name}-{template_hash(deployment.template)}"


def pod_from_deployment(deployment: Deployment, rng: random.Random | None = None) -> Pod:
    """A new pod of the Deployment: template labels + pod-template-hash, fresh name."""
    h = template_hash(deployment.template)
    t = deployment.template
    meta = ObjectMeta(name=f"{deployment.metadata.name}-{h}-{random_suffix(rng)}",
                      namespace=deployment.metadata.namespace,
                      labels={**t.labels, "pod-template-hash": h},
                      annotations=dict(t.annotations))
    return Pod(metadata=meta, spec=t.spec)
