"""Services: L4 load balancing to backends in BPF (Cilium's ``pkg/service``).

``model`` parses and renders Cilium's ServiceSpec; ``manager`` owns the
service IDs, backend IDs, the node-store records and the LB maps.
"""
