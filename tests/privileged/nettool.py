"""Traffic helper the privileged tests run inside namespaces (stdlib only):
ping, tcp, udp, serve, bulk/sink, large UDP datagrams, raw frames and raw IP
packets, and sniffers counting (or capturing) what reached a socket."""
import os, select, socket, struct, sys, threading, time

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def fam(addr): return socket.AF_INET6 if ":" in addr else socket.AF_INET

def ping(dst, src=None, timeout=1.0, count=1):
    f = fam(dst)
    proto = socket.IPPROTO_ICMPV6 if f == socket.AF_INET6 else socket.IPPROTO_ICMP
    s = socket.socket(f, socket.SOCK_RAW, proto)
    if src: s.bind((src, 0))
    timeout = float(timeout)
    ident = (os.getpid() ^ int(time.time() * 1000)) & 0xffff
    ok, count = 0, int(count)
    for seq in range(count):
        typ = 128 if f == socket.AF_INET6 else 8
        hdr = struct.pack("!BBHHH", typ, 0, 0, ident, seq) + b"dctest-ping-payload"
        if f == socket.AF_INET:
            hdr = hdr[:2] + struct.pack("!H", csum(hdr)) + hdr[4:]
        s.sendto(hdr, (dst, 0))
        end = time.time() + timeout
        while time.time() < end:
            r, _, _ = select.select([s], [], [], max(0, end - time.time()))
            if not r: break
            data, addr = s.recvfrom(2048)
            if f == socket.AF_INET:
                data = data[(data[0] & 0x0f) * 4:]
                want = 0
            else:
                want = 129
            if len(data) >= 8 and data[0] == want and struct.unpack("!H", data[4:6])[0] == ident:
                ok += 1
                break
    return 0 if ok == count else 2

def tcp(dst, port, src=None, timeout=1.0):
    s = socket.socket(fam(dst), socket.SOCK_STREAM)
    s.settimeout(timeout)
    if src: s.bind((src, 0))
    try:
        s.connect((dst, int(port)))
        s.sendall(b"hello")
        data = s.recv(100)
        return 0 if data == b"ok:hello" else 4
    except socket.timeout:
        return 2
    except ConnectionRefusedError:
        return 3
    except OSError:
        return 5

def _udp_ask(dst, port, payload, want, src=None, timeout=1.0):
    s = socket.socket(fam(dst), socket.SOCK_DGRAM)
    s.settimeout(timeout)
    if src: s.bind((src, 0))
    s.connect((dst, int(port)))  # connected: ICMP errors surface as ECONNREFUSED
    s.send(payload)
    try:
        return 0 if want(s.recv(65535)) else 4
    except socket.timeout:
        return 2
    except OSError:
        return 3

def udp(dst, port, src=None, timeout=1.0):
    return _udp_ask(dst, port, b"hello", lambda d: d == b"ok:hello", src, timeout)

def serve(*ports):
    def tcp_loop(ls):
        while True:
            c, _ = ls.accept()
            try:
                c.settimeout(2)
                d = c.recv(100)
                c.sendall(b"ok:" + d)
            except OSError:
                pass
            finally:
                c.close()
    def udp_loop(us):
        while True:
            d, a = us.recvfrom(65535)
            if d.startswith(b"big:"):           # "big:N": answer with N bytes
                us.sendto(b"B" * int(d[4:]), a)
            elif len(d) > 100:                  # large datagram: report its size
                us.sendto(b"ok:len=%d" % len(d), a)
            else:
                us.sendto(b"ok:" + d, a)
    _serve_ports(ports, tcp_loop, udp_loop)

def _serve_ports(ports, tcp_loop, udp_loop):
    """Dual-stack TCP and UDP sockets on each port, each served by its loop in
    a thread; "ready" once bound, then run until the test closes our stdin."""
    for p in ports:
        ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("::", int(p))); ls.listen(64)
        threading.Thread(target=tcp_loop, args=(ls,), daemon=True).start()
        us = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        us.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        us.bind(("::", int(p)))
        threading.Thread(target=udp_loop, args=(us,), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # exit when the test closes our stdin

def udpsize(dst, port, size):
    """Send one datagram of size bytes; the server reports the size it got."""
    n = int(size)
    return _udp_ask(dst, port, b"x" * n, lambda d: d == b"ok:len=%d" % n)

def udpget(dst, port, size):
    """Ask for one datagram of size bytes and check it arrives whole."""
    n = int(size)
    return _udp_ask(dst, port, b"big:%d" % n, lambda d: len(d) == n)

def many(kind, dst, port, n):
    """n tcp/udp exchanges, each from a new socket (a new flow); prints how
    many were answered."""
    ok = sum(1 for _ in range(int(n)) if {"tcp": tcp, "udp": udp}[kind](dst, port) == 0)
    print(ok, flush=True)
    return 0 if ok == int(n) else 2

def tcphold(dst, port):
    """Open a connection to a sink, send a little, print "ready" and keep it
    open until stdin closes (a live, answered connection)."""
    s = socket.create_connection((dst, int(port)), timeout=2)
    s.sendall(b"hold")
    print("ready", flush=True)
    sys.stdin.read()
    s.close()

def sendframe(hexframe, count=1, ifname="eth0"):
    """Send a raw Ethernet frame (AF_PACKET: only CAP_NET_RAW needed)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    for _ in range(int(count)):
        s.send(bytes.fromhex(hexframe))
    return 0

def rawip(dst, proto, hexpayload, hops=None, count=1):
    """Send an L4 payload through a raw IP socket (the kernel adds the IP
    header with our address; ICMPv6 checksums are filled in by the kernel)."""
    s = socket.socket(fam(dst), socket.SOCK_RAW, int(proto))
    if hops is not None and fam(dst) == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, int(hops))
    elif hops is not None:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(hops))
    for _ in range(int(count)):
        s.sendto(bytes.fromhex(hexpayload), (dst, 0))
    return 0

def tcpraw(dst, dport, n, flags="10"):
    """n bare TCP segments (flags hex, default ACK) from source ports
    20000.. through a raw socket: packets no socket of ours sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    for i in range(int(n)):
        s.sendto(struct.pack("!HHIIBBHHH", 20000 + i, int(dport), 1, 1, 5 << 4,
                             int(flags, 16), 1024, 0, 0), (dst, 0))
    return 0

def sniff(spec, marker, seconds):
    """Count packets containing marker that reach a socket here: icmp4, icmp6,
    udp:PORT or eth:ETHERTYPE:IFNAME (an AF_PACKET socket bound to that
    protocol sees frames only after tc ingress let them through)."""
    kind, _, rest = spec.partition(":")
    if kind == "icmp4":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    elif kind == "icmp6":
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    elif kind == "udp":
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", int(rest)))
    else:
        etype, ifname = rest.split(":")
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(int(etype, 16)))
        s.bind((ifname, int(etype, 16)))
    marker = bytes.fromhex(marker)
    print("ready", flush=True)
    n, end = 0, time.time() + float(seconds)
    while time.time() < end:
        r, _, _ = select.select([s], [], [], max(0, end - time.time()))
        if r and marker in s.recv(65535):
            n += 1
    print(n, flush=True)
    return 0

def capture(etype, ifname, marker, seconds):
    """Print the hex of the first frame of that ethertype containing marker
    that ifname receives (an empty line if none came within seconds)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(int(etype, 16)))
    s.bind((ifname, int(etype, 16)))
    marker = bytes.fromhex(marker)
    print("ready", flush=True)
    end = time.time() + float(seconds)
    while time.time() < end:
        r, _, _ = select.select([s], [], [], max(0, end - time.time()))
        if r:
            frame, addr = s.recvfrom(65535)
            if marker in frame and addr[2] != socket.PACKET_OUTGOING:
                print(frame.hex(), flush=True)
                return 0
    print("", flush=True)
    return 0

def bulk(dst, port, mbytes, src=None):
    """Send mbytes MiB, the server answers with the byte count it read."""
    s = socket.socket(fam(dst), socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect((dst, int(port)))
    buf = b"x" * (1 << 20)
    t0 = time.time()
    for _ in range(int(mbytes)):
        s.sendall(buf)
    s.shutdown(socket.SHUT_WR)
    got = int(s.recv(100))
    dt = time.time() - t0
    print("%.2f" % (got * 8 / dt / 1e9))
    return 0 if got == int(mbytes) << 20 else 4

def sink(port):
    ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("::", int(port))); ls.listen(8)
    def one(c):
        n = 0
        while True:
            d = c.recv(1 << 20)
            if not d: break
            n += len(d)
        c.sendall(str(n).encode()); c.close()
    def loop():
        while True:
            c, _ = ls.accept()
            threading.Thread(target=one, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()

def idserve(name, *ports):
    """Servers that answer every TCP message and UDP datagram with 'name'
    (which backend a client reached); a TCP connection stays open for more."""
    def conn(c):
        with c:
            while True:
                try:
                    if not c.recv(100):
                        return
                    c.sendall(name.encode())
                except OSError:
                    return
    def tcp_loop(ls):
        while True:
            c, _ = ls.accept()
            threading.Thread(target=conn, args=(c,), daemon=True).start()
    def udp_loop(us):
        while True:
            _d, a = us.recvfrom(65535)
            us.sendto(name.encode(), a)
    _serve_ports(ports, tcp_loop, udp_loop)

def ask(kind, dst, port, n, timeout=1.0):
    """n exchanges with an idserve, each from a new socket (connected, so a
    reply from any other address than dst:port is not taken); prints one
    answer per line, '-' when there was none."""
    for _ in range(int(n)):
        s = socket.socket(fam(dst), socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        s.settimeout(float(timeout))
        try:
            s.connect((dst, int(port)))
            s.send(b"who")
            print(s.recv(100).decode() or "-", flush=True)
        except OSError:
            print("-", flush=True)
        finally:
            s.close()

def converse(dst, port):
    """One TCP connection to an idserve: print "ready" once connected, then
    for every stdin line send it and print the answer ('-' for none, 'closed'
    when the connection ended)."""
    s = socket.create_connection((dst, int(port)), timeout=2)
    print("ready", flush=True)
    for _line in sys.stdin:
        try:
            s.send(b"x")
            d = s.recv(100)
            print(d.decode() if d else "closed", flush=True)
        except socket.timeout:
            print("-", flush=True)
        except OSError:
            print("closed", flush=True)

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    kw = {}
    rest = []
    for a in args:
        k, eq, v = a.partition("=")
        if eq and k in ("src", "hops", "count", "flags", "timeout"): kw[k] = v
        else: rest.append(a)
    sys.exit({"ping": ping, "tcp": tcp, "udp": udp, "serve": serve,
              "bulk": bulk, "sink": sink, "udpsize": udpsize, "udpget": udpget,
              "sendframe": sendframe, "rawip": rawip, "sniff": sniff, "capture": capture,
              "tcpraw": tcpraw, "many": many, "tcphold": tcphold,
              "idserve": idserve, "ask": ask, "converse": converse}[cmd](*rest, **kw) or 0)
