"""Envoy's admin API, the subset istioctl and ``remora proxy-config`` read."""
