"""The datapath's pinned BPF maps, one module per map as Cilium's
``pkg/maps/<name>``: each holds the ctypes mirrors of its key/value structs
(bpf_src/lib/common.h), the constants it shares with the C code and a typed
wrapper. :mod:`.registry` opens them all by pin path.

Import from the module that owns a name; this package re-exports nothing.
"""
