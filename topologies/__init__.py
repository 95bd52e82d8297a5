"""Topology files shipped with geoml (data only; load them with geoml.bus.load_topology)."""
