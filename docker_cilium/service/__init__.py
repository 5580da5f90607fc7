"""Services: L4 load balancing to backends in BPF (Cilium's ``pkg/service``).

``model`` parses and renders Cilium's ServiceSpec; ``manager`` owns the
service IDs, backend IDs, the records and the LB maps; ``cluster`` keeps the
records and ID claims in the cluster store when there is one (etcd).
"""
