"""`remora explain` and `remora proxy-config`: from evidence to a report.

- ``iptables/``: capture rules (iptables-save, ``-L -v`` listings), walking a packet
  through them, and TPROXY policy routing (``ip rule``);
- ``envoy/``: Envoy config dumps, filter-chain/route/cluster simulation, access logs;
- ``source_ip/``: explain source-ip: the evidence it takes, the analysis, the verdict,
  its renderings;
- ``proxy_config/``: istioctl's proxy-config tables from a config dump;
- ``evidence/``: the evidence sources (files, the lab, a cluster through the Kubernetes
  API), the only modules here that do I/O beyond reading a file's text.
Everything but ``evidence/`` is pure and never imports the lab, the node or kubeapi.
"""
