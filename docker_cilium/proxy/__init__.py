"""The L7 (HTTP) proxy: transparent listeners the datapath steers redirected
connections to, one per redirect (endpoint, direction, port), as Cilium's
``pkg/proxy``."""
