"""`cilium monitor`, agent side, without a kernel: packet dissection, event
decoding, Cilium's line format, the hub's bounded drop-oldest queues and
filters, and GET /v1/monitor served by the real REST app."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import struct
import time

from aiohttp import ClientSession, ClientTimeout, web

from docker_cilium.agent.servers import UnixServer
from docker_cilium.api import monitor as monitor_api
from docker_cilium.api.keys import DAEMON

from docker_cilium.datapath.maps.eventsmap import NOTIFY_DROP, NOTIFY_TRACE, TRACE_TO_LXC, DatapathEvent
from docker_cilium.monitor.dissect import connection_summary, dissect
from docker_cilium.monitor.events import agent_event, decode
from docker_cilium.monitor.format import info, render
from docker_cilium.monitor.hub import Filter, MonitorHub
from tests import packets

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def ipv4_frame(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return packets.eth(MAC_B, MAC_A, packets.ETH_P_IP, packets.ipv4(src, dst, proto, l4, ident=1))


def ipv6_frame(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return packets.eth(MAC_B, MAC_A, packets.ETH_P_IPV6, packets.ipv6(src, dst, proto, l4))


ECHO = ipv4_frame("10.11.13.37", "10.11.101.61", 1, packets.echo_request())
SYN = ipv4_frame("10.0.0.1", "10.0.0.2", 6, struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x02, 512, 0, 0))
SYN6 = ipv6_frame("f00d::1", "f00d::2", 6, struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x12, 512, 0, 0))


def datapath_event(typ: int, subtype: int, data: bytes, **kw: int) -> DatapathEvent:
    fields = dict(cpu=1, type=typ, subtype=subtype, source=25729, hash=0xABC, len_orig=len(data),
                  len_cap=len(data), src_label=261, dst_label=264, dst_id=25729, ifindex=7, data=data)
    fields.update(kw)
    return DatapathEvent(**fields)  # type: ignore[arg-type]


def test_connection_summaries_match_cilium():
    assert connection_summary(dissect(ECHO)) == "10.11.13.37 -> 10.11.101.61 EchoRequest"
    assert connection_summary(dissect(SYN)) == "10.0.0.1:40000 -> 10.0.0.2:80 tcp SYN"
    assert connection_summary(dissect(SYN6)) == "[f00d::1]:40000 -> [f00d::2]:80 tcp SYN, ACK"
    assert dissect(SYN6)["l4"] == {"src": "40000", "dst": "80"}
    # A capture cut inside the IP header: only what is there.
    assert "l3" not in dissect(ECHO[:20]) and connection_summary(dissect(ECHO[:20])).endswith("IPv4")
    assert dissect(b"") == {}



def test_vlan_tagged_frames_are_dissected_past_their_tags():
    tcp = SYN[14:]
    tagged = SYN[:12] + b"\x81\x00\x00\x05" + b"\x08\x00" + tcp           # 802.1Q, VLAN 5
    qinq = SYN[:12] + b"\x88\xa8\x00\x07\x81\x00\x00\x05\x08\x00" + tcp  # 802.1ad outer tag, then 802.1Q
    for frame in (tagged, qinq):
        assert connection_summary(dissect(frame)) == "10.0.0.1:40000 -> 10.0.0.2:80 tcp SYN"
        assert dissect(frame)["vlan"] == 5
    assert connection_summary(dissect(tagged[:17])).endswith("0x8100")  # the tag cut off: MACs only


def test_fragments_after_the_first_show_no_ports():
    """A later fragment's payload is the middle of the datagram, not an L4 header."""
    ip = bytearray(SYN[14:])
    ip[6:8] = (185).to_bytes(2, "big")                          # fragment offset 185 x 8 bytes
    later = SYN[:14] + bytes(ip)
    assert "l4" not in dissect(later) and "tcpFlags" not in dissect(later)
    assert connection_summary(dissect(later)) == "10.0.0.1 -> 10.0.0.2"
    first = bytearray(SYN[14:])
    first[6:8] = (0x2000).to_bytes(2, "big")                    # more fragments, offset 0: ports are there
    assert connection_summary(dissect(SYN[:14] + bytes(first))) == "10.0.0.1:40000 -> 10.0.0.2:80 tcp SYN"
    frag6 = struct.pack("!BBHI", 6, 0, 0x0001, 7)               # IPv6 fragment header, offset 0, more fragments
    first6 = ipv6_frame("f00d::1", "f00d::2", 44, frag6 + SYN6[54:])
    assert connection_summary(dissect(first6)) == "[f00d::1]:40000 -> [f00d::2]:80 tcp SYN, ACK"
    later6 = ipv6_frame("f00d::1", "f00d::2", 44, struct.pack("!BBHI", 6, 0, 185 << 3, 7) + SYN6[54:])
    assert connection_summary(dissect(later6)) == "f00d::1 -> f00d::2" and "l4" not in dissect(later6)


def test_bad_ipv4_header_length_decodes_no_l4():
    ip = bytearray(SYN[14:])
    ip[0] = 0x42                                                # IHL 2 words: shorter than an IPv4 header
    d = dissect(SYN[:14] + bytes(ip))
    assert d["l3"] == {"src": "10.0.0.1", "dst": "10.0.0.2"} and "l4" not in d

def test_drop_event_json_and_line():
    labels = {261: ["container:id=app3"], 264: ["container:id=app1"]}
    e = decode(datapath_event(NOTIFY_DROP, 133, ECHO), "2026-01-01T00:00:00Z", labels.get)
    assert json.loads(json.dumps(e)) == e  # JSON-ready as is
    assert (e["type"], e["verdict"], e["reason"], e["srcLabel"], e["dstLabel"]) == \
        ("drop", "DROPPED", "Policy denied (L3)", 261, 264)
    assert e["srcLabels"] == ["container:id=app3"] and e["summary"]["l3"]["dst"] == "10.11.101.61"
    assert info(e) == ("xx drop (Policy denied (L3)) flow 0xabc to endpoint 25729, ifindex 7, "
                       "identity 261->264: 10.11.13.37 -> 10.11.101.61 EchoRequest")
    verbose = render(e, 1, False)
    assert verbose[1].startswith("CPU 01: MARK 0xabc FROM 25729 DROP: 42 bytes, reason Policy denied (L3)")
    assert any(line.startswith("ICMPv4") and "EchoRequest" in line for line in verbose)
    hexed = render(e, 1, True)
    assert hexed[2].startswith("00000000  02 00 00 00 00 02 02 00")


def test_trace_event_line():
    e = decode(datapath_event(NOTIFY_TRACE, TRACE_TO_LXC, SYN, ifindex=0), "t")
    assert info(e) == "-> endpoint 25729 flow 0xabc identity 261->264 state new ifindex 0: " \
                      "10.0.0.1:40000 -> 10.0.0.2:80 tcp SYN"


def test_agent_event_line():
    e = agent_event("Policy updated", {"labels": ["unspec:name=l3-rule"], "revision": 2, "rule_count": 1})
    assert info(e) == '>> Policy updated: {"labels":["unspec:name=l3-rule"],"revision":2,"rule_count":1}'


async def test_full_queue_drops_oldest_and_reports_how_many():
    hub = MonitorHub(queue_len=3)
    with hub.subscribe() as sub:
        for i in range(10):
            hub.publish({"type": "agent", "subtype": "x", "message": {"n": i}})
        batch = [item.event for item in await sub.get()]
    assert batch[0] == {**batch[0], "type": "lost", "lost": 7, "where": "queue"}
    assert [e["message"]["n"] for e in batch[1:]] == [7, 8, 9]  # the newest survive
    assert not hub.subscribers


async def test_filters_by_type_and_endpoint():
    hub = MonitorHub()
    events = [{"type": "drop", "source": 1, "dstID": 2}, {"type": "trace", "source": 2, "dstID": 3},
              {"type": "agent", "subtype": "Endpoint created", "message": {"id": 3}},
              {"type": "agent", "subtype": "Policy updated", "message": {"revision": 2}},
              {"type": "lost", "lost": 1, "where": "ring", "cpu": 0}]
    subs = {name: hub.subscribe(flt) for name, flt in {
        "drops": Filter(types=frozenset({"drop"})), "from2": Filter(from_=frozenset({2})),
        "to3": Filter(to=frozenset({3})), "rel3": Filter(related=frozenset({3})), "all": Filter()}.items()}
    for e in events:
        hub.publish(e)
    got = {}
    for name, s in subs.items():
        batch = [it.event for it in await s.get()]
        got[name] = [i for i, e in enumerate(events) if any(b is e for b in batch)]
    assert got == {"drops": [0, 4], "from2": [1, 4], "to3": [1, 2, 4], "rel3": [1, 2, 4], "all": [0, 1, 2, 3, 4]}


async def _lines(resp, n: int) -> list[dict]:
    out = []
    while len(out) < n:
        out.append(json.loads(await resp.content.readline()))
    return out


async def test_api_streams_agent_events_of_a_policy_import(api):
    client, daemon = api
    async with client.get("/v1/monitor", params=[("type", "agent")]) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-ndjson"
        start = (await _lines(resp, 1))[0]
        assert start["type"] == "monitor-start" and start["subscribers"] == 1
        rule = [{"endpointSelector": {"matchLabels": {"id": "app1"}}, "labels": [{"key": "name", "value": "r1"}],
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}]}]}]
        put = await client.put("/v1/policy", data=json.dumps(rule))
        assert put.status == 200, await put.text()
        rev = (await put.json())["revision"]
        events: list[dict] = []

        def regenerated() -> set[int]:
            return {e["message"]["id"] for e in events if e["subtype"] == "Endpoint regenerated"
                    and e["message"]["revision"] == rev}

        async def until_done() -> None:
            while not (any(e["subtype"] == "Policy updated" for e in events) and regenerated() == {1001, 1002}):
                events.extend(await _lines(resp, 1))

        await asyncio.wait_for(until_done(), 10)
    upd = next(e for e in events if e["subtype"] == "Policy updated")
    assert upd["message"] == {"labels": ["unspec:name=r1"], "revision": rev, "rule_count": 1}


async def test_api_rejects_bad_filters(api):
    client, _ = api
    for params, text in (({"type": "drops"}, "unknown event type 'drops'"), ({"from": "x"}, "not an endpoint ID"),
                         ({"to": "70000"}, "not an endpoint ID"), ({"since": "1"}, "unknown monitor parameter")):
        resp = await client.get("/v1/monitor", params=params)
        assert resp.status == 400 and text in (await resp.json())["message"], params


async def test_client_that_never_reads_stalls_neither_publisher_nor_other_client(api):
    """A subscriber whose socket is never read: publishing stays fast, the
    agent keeps answering, the reading client gets every event in order, and
    the stalled one's queue stays bounded and counts what it dropped."""
    client, daemon = api
    hub = daemon.monitor
    url = client.make_url("/v1/monitor")
    stalled = socket.create_connection((url.host, url.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /v1/monitor HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode())
    n, batch = 30000, 300
    padding = "x" * 300  # ~0.4 kB a line, as a drop event with its packet bytes
    # Earlier tests' objects are not the hub's: a full collection over them
    # (200 ms seen after the whole unit suite) would be charged to publishing.
    gc.collect()
    gc.freeze()
    try:
        async with ClientSession(timeout=ClientTimeout(total=60)) as session:
            async with session.get(url) as resp:
                assert (await _lines(resp, 1))[0]["type"] == "monitor-start"
                deadline = time.monotonic() + 5
                while len(hub.subscribers) < 2:  # the stalled client's request has arrived
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)

                async def read_all() -> list[dict]:
                    return await _lines(resp, n)

                reader = asyncio.create_task(read_all())
                worst_publish = worst_api = 0.0
                for start in range(0, n, batch):
                    # CPU time of this thread: a loaded machine descheduling
                    # the process is not the publisher stalling.
                    t0 = time.thread_time()
                    for i in range(start, start + batch):
                        hub.publish({"type": "agent", "subtype": "bench", "message": {"n": i, "pad": padding}})
                    worst_publish = max(worst_publish, time.thread_time() - t0)
                    if start % (batch * 20) == 0:
                        t0 = time.perf_counter()
                        assert (await client.get("/v1/endpoint")).status == 200
                        worst_api = max(worst_api, time.perf_counter() - t0)
                    await asyncio.sleep(0.002)  # the datapath reader's next wake-up
                got = await asyncio.wait_for(reader, 30)
        stalled_sub = next(s for s in hub.subscribers if s.delivered < n)
        assert [e["message"]["n"] for e in got] == list(range(n))  # none lost, none reordered, no "lost" line
        assert stalled_sub.dropped_total > n // 4 and len(stalled_sub.queue) <= hub.queue_len
        assert worst_publish < 0.05, f"publishing {batch} events took {worst_publish:.3f}s"
        assert worst_api < 2.0, f"an API call during the flood took {worst_api:.3f}s"
    finally:
        gc.unfreeze()
        stalled.close()


async def test_client_that_leaves_is_unsubscribed_on_a_quiet_stream(api):
    """`cilium monitor` stopped with Ctrl-C while nothing happens: its
    subscription ends within the stream's check interval, not at the next
    event or at shutdown."""
    client, daemon = api
    hub = daemon.monitor
    for close in ("response", "socket"):
        url = client.make_url("/v1/monitor")
        if close == "response":
            resp = await client.get("/v1/monitor")
            assert (await _lines(resp, 1))[0]["type"] == "monitor-start"
            resp.close()
        else:
            reader, writer = await asyncio.open_connection(url.host, url.port)
            writer.write(f"GET /v1/monitor HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode())
            got = b""
            while b"monitor-start" not in got:
                got += await asyncio.wait_for(reader.read(65536), 5)
            writer.close()
        deadline = time.monotonic() + 5
        while hub.subscribers:
            assert time.monotonic() < deadline, f"{len(hub.subscribers)} subscriber(s) left after the {close} closed"
            await asyncio.sleep(0.05)


async def test_agent_stop_is_not_held_by_a_client_that_never_reads(tmp_path):
    """A `cilium monitor` that stopped reading (a paused terminal) has the
    stream's write waiting on its full socket: closing the hub ends that
    stream at once, so the API server stops without its shutdown timeout."""
    hub = MonitorHub(queue_len=256)

    class _Daemon:
        monitor = hub

        def monitor_status(self) -> dict:
            return hub.status()

    app = web.Application()
    app[DAEMON] = _Daemon()  # type: ignore[assignment]
    app.router.add_routes(monitor_api.routes)
    server = UnixServer(app, str(tmp_path / "api.sock"), 0o600, "api")
    await server.start()
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(server.path)
    stalled.sendall(b"GET /v1/monitor HTTP/1.1\r\nHost: localhost\r\n\r\n")  # and never reads
    try:
        deadline = time.monotonic() + 5
        while not hub.subscribers:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        sub = hub.subscribers[0]
        for i in range(5000):  # far more than the socket buffers hold
            hub.publish({"type": "agent", "subtype": "x", "message": {"n": i, "pad": "x" * 300}})
            if i % 500 == 0:
                await asyncio.sleep(0.01)
        deadline = time.monotonic() + 5
        while not sub.dropped_total:  # the writer is stuck: the queue overflowed behind it
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        hub.close()
        await asyncio.wait_for(server.stop(), 30)
        assert time.monotonic() - t0 < 5
    finally:
        stalled.close()
