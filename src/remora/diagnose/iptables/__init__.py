"""Capture rules as evidence: parsed listings, the packet walk, TPROXY policy routing."""
