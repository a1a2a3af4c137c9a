"""The lab: Kubernetes manifests become meshed pods on the node runtime (docs/lab.md).

remora.node runs pods; this package makes them meshed the way Istio's injector and
kubelet would (MeshSetup), and gives the kubectl/istioctl-like CLI and `remora demo`
what they need: manifests, the image map, tables, progress, the seed story.
"""
