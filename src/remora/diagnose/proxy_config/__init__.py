"""`proxy-config`: istioctl's listener/cluster/route/endpoint/secret tables from a dump."""
