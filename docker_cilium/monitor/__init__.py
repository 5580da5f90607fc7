"""`cilium monitor`, agent side: datapath events read from cilium_events and
agent events, decoded once and fanned out to every subscriber of
``GET /v1/monitor`` (see hub.py for why a slow subscriber stalls nobody)."""
