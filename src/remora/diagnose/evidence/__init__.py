"""Where evidence comes from: files, the remora lab, a cluster through the Kubernetes API.

The I/O edge of diagnose; the pure analysis takes the collected ``Evidence``
(remora.diagnose.source_ip.evidence) and never imports a source.
"""
