"""The XDP prefilter's control plane (Cilium's ``pkg/datapath/prefilter``):
the deny list with its revision (``spec.py``), kept in the node store and in
the datapath's CIDR tries (``manager.py``). Loading and attaching the XDP
program is ``docker_cilium.datapath.xdp``."""

from docker_cilium.prefilter.manager import PreFilter
from docker_cilium.prefilter.spec import PrefilterSpec, parse_cidr, parse_spec

__all__ = ["PreFilter", "PrefilterSpec", "parse_cidr", "parse_spec"]
