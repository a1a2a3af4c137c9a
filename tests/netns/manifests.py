"""Manifests that several netns tests apply beside the seed's, kept in one place."""

from __future__ import annotations

# A plain (unmeshed: no injection label) copy of the seed's server and its Service, for
# explain's "pod without a sidecar" paths.
PLAIN_SERVER = """\
apiVersion: v1
kind: Namespace
metadata:
  name: plain
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: plain-server
  namespace: plain
spec:
  selector:
    matchLabels:
      web: plain
  template:
    metadata:
      labels:
        web: plain
    spec:
      containers:
      - name: demo
        image: vasth/simple-server
---
apiVersion: v1
kind: Service
metadata:
  name: plain-svc
  namespace: plain
spec:
  selector:
    web: plain
  ports:
  - port: 18080
"""

# A plain pod with a shell, for reaching services from outside the mesh.
TOOLBOX = """\
apiVersion: v1
kind: Namespace
metadata:
  name: plain
---
apiVersion: v1
kind: Pod
metadata:
  name: toolbox
  namespace: plain
spec:
  containers:
  - name: sleep
    image: busybox
    command: ["sleep", "3600"]
"""
