"""The prefilter at agent start: restored into the tries, then attached; or,
without ``--prefilter-device``, taken off wherever an earlier run left it."""

from __future__ import annotations

import asyncio

import structlog

from docker_cilium import defaults
from docker_cilium.datapath import xdp
from docker_cilium.datapath.loader import compile_datapath
from docker_cilium.kvstore.backend import Backend
from docker_cilium.prefilter.manager import CIDRTries, PreFilter

log = structlog.get_logger(__name__)


async def start_prefilter(store: Backend, tries: CIDRTries, device: str, mode: str, bpf_root: str,
                          state_dir: str) -> PreFilter | None:
    """The agent's PreFilter (None when no device is configured). The tries
    hold the persisted list before the program is attached, so a restart never
    opens a window where a denied source gets through."""
    prog_dir = defaults.bpf_prog_dir(bpf_root)
    if not device:
        for attached in await asyncio.to_thread(xdp.remove, prog_dir):
            log.info("prefilter.removed", where=str(attached), reason="no --prefilter-device")
        return None
    prefilter = PreFilter(store, tries, device, mode)
    await prefilter.restore()
    obj = await asyncio.to_thread(compile_datapath, out_dir=defaults.bpf_object_dir(state_dir),
                                  source=xdp.XDP_SOURCE)
    await asyncio.to_thread(xdp.install, str(obj), defaults.bpf_pin_root(bpf_root), prog_dir, device, mode)
    return prefilter
