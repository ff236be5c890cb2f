"""HTTP/2 abuse against a running prefixd, run as a child process so that the well-behaved client
the test measures meanwhile shares neither a socket nor an interpreter lock with the attacker:

    python abuse.py MODE PORT SECONDS [JSON-ARGS]

Every mode loops over fresh connections until SECONDS have passed (at most `conn_rate` a second,
default 1,000, and at most `max_conns` in all when given), records how each connection
ended, and prints one JSON summary line on stdout. The rate is bounded so that an attack offers
the same load on every machine: unbounded, a ping burst opened 4,000 connections a second on one
2-core machine and 6,000 on another, which measures the machine's connect rate (a connection
flood, the OS's accept backlog's job) rather than the daemon's answer to the frames.
A connection "ends" when the daemon sends GOAWAY (`goaway`, with its error code), closes the
socket (`closed`), or refuses what was asked (`refused`: RST_STREAM or a gRPC status); one the
daemon never ended within the mode's own bound is counted as `open` -- the tests require none.

Modes:
  rapid_reset   open a stream (HEADERS) and reset it (RST_STREAM CANCEL), 100 per write,
                until the daemon ends the connection (at most `max_streams` per connection)
  ping_burst    `burst` PINGs per write without reading the acks
  ping_paced    `batch` PINGs per write, reading every ack before the next batch
  streams       open `limit` streams (HEADERS, body never finished), then `extra` more
  slow_reader   SETTINGS_INITIAL_WINDOW_SIZE 0, then `streams` Generate requests (`request`,
                hex) whose window is never opened; sits for the whole time. With `open_window`
                the windows are as large as HTTP/2 allows instead, and it reads everything: the
                same requests from a client that keeps up (the slow reader's baseline)
  oversized     requests whose gRPC message is larger than 4 MiB (a real body of 4 MiB + 1 KiB;
                a 5-byte prefix declaring 16 MiB) on `streams` streams at once; expects
                RESOURCE_EXHAUSTED on each
  half_open     `conns` connections that send nothing, half a preface, or the preface and
                SETTINGS, and then sit; reports how many the daemon closed
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h2wire import ERR, SET, Wire, grpc_body, ping_frame  # noqa: E402

MAX_WINDOW = (1 << 31) - 1
HEALTH = "/prefixd.v1.Prefixd/Health"
GENERATE = "/prefixd.v1.Prefixd/Generate"
TOKENIZE = "/prefixd.v1.Prefixd/Tokenize"


def handshake(port, settings=None, ack_wait=2.0):
    w = Wire(port)
    w.preface(settings)
    w.wait_for(lambda: w.settings_acked and w.server_settings, ack_wait)
    return w


def ended(w):
    if w.goaway is not None:
        return f"goaway:{ERR(w.goaway[0]).name if w.goaway[0] in set(ERR) else w.goaway[0]}"
    return "closed" if w.closed else None


def fresh_connections(secs, args):
    """Yields once for each connection an attack loop opens: until `secs` have passed, at most
    `conn_rate` a second, and at most `max_conns` in all when given."""
    start = time.monotonic()
    end = start + secs
    rate = args.get("conn_rate", 1000)
    opened = 0
    while opened < args.get("max_conns", float("inf")):
        now = time.monotonic()
        wait = start + opened / rate - now
        if now + max(wait, 0.0) >= end:
            return
        if wait > 0:
            time.sleep(wait)
        yield
        opened += 1


def rapid_reset(port, secs, args):
    out = {"connections": 0, "ends": {}, "streams_per_conn": []}
    max_streams = args.get("max_streams", 20000)
    for _ in fresh_connections(secs, args):
        w = handshake(port)
        out["connections"] += 1
        n = 0
        while n < max_streams and ended(w) is None:
            batch = []
            for _ in range(100):
                sid = w.new_sid()
                batch.append(w.headers_frame(sid, HEALTH) + w.rst_frame(sid, ERR.CANCEL))
                n += 1
            if not w.send(b"".join(batch)):
                break
            w.pump(0)
        how = ended(w) or w.wait_end(3.0)
        how = ended(w) or "open"
        out["ends"][how] = out["ends"].get(how, 0) + 1
        out["streams_per_conn"].append(n)
        w.close()
    return out


def ping_burst(port, secs, args):
    burst = ping_frame() * args.get("burst", 4000)
    out = {"connections": 0, "ends": {}, "pings_per_conn": []}
    for _ in fresh_connections(secs, args):
        w = handshake(port)
        out["connections"] += 1
        n = 0
        deadline = time.monotonic() + 5
        while ended(w) is None and time.monotonic() < deadline and n < 2_000_000:
            if not w.send(burst):
                break
            n += args.get("burst", 4000)
        w.pump(0.2)
        how = ended(w) or "open"
        out["ends"][how] = out["ends"].get(how, 0) + 1
        out["pings_per_conn"].append(n)
        w.close()
    return out


def ping_paced(port, secs, args):
    end = time.monotonic() + secs
    batch = args.get("batch", 200)
    frames = ping_frame() * batch
    per_conn = args.get("max_pings", 200_000)
    out = {"connections": 0, "ends": {}, "pings_per_conn": [], "acks": 0}
    for _ in fresh_connections(secs, args):
        w = handshake(port)
        out["connections"] += 1
        n = 0
        while ended(w) is None and n < per_conn and time.monotonic() < end:
            if not w.send(frames):
                break
            n += batch
            want = n
            w.wait_for(lambda: w.ping_acks >= want, 5.0)
        w.pump(0.1)
        how = ended(w) or "open"
        out["ends"][how] = out["ends"].get(how, 0) + 1
        out["pings_per_conn"].append(n)
        out["acks"] += w.ping_acks
        w.close()
    return out


def streams(port, secs, args):
    limit, extra = args.get("limit", 100), args.get("extra", 20)
    ack = args.get("ack_settings", True)
    out = {"connections": 0, "ends": {}, "refused": 0, "advertised": None, "finished_ok": 0}
    health_msg = b""
    for _ in fresh_connections(secs, args):
        w = Wire(port)
        if not ack:
            w.settings_ack = lambda: True  # never acknowledge the server's SETTINGS
        w.preface()
        w.wait_for(lambda: bool(w.server_settings), 2.0)
        if ack:
            w.wait_for(lambda: w.settings_acked, 2.0)
        out["connections"] += 1
        out["advertised"] = w.server_settings.get(int(SET.MAX_CONCURRENT_STREAMS))
        held = [w.new_sid() for _ in range(limit)]
        w.send(b"".join(w.headers_frame(sid, HEALTH) for sid in held))
        over = [w.new_sid() for _ in range(extra)]
        w.send(b"".join(w.headers_frame(sid, HEALTH) for sid in over))
        w.wait_for(lambda: w.goaway is not None or all(s in w.resets for s in over), 3.0)
        refused = sum(1 for s in over if s in w.resets)
        out["refused"] += refused
        if ended(w) is None and refused == len(over):
            # the streams within the limit still work: finish one of them
            w.send(w.data_frames(held[0], grpc_body(health_msg)))
            w.wait_for(lambda: w.status(held[0]) is not None, 3.0)
            out["finished_ok"] += int(w.status(held[0]) == 0)
            how = "refused"
        else:
            how = ended(w) or "open"
        out["ends"][how] = out["ends"].get(how, 0) + 1
        w.close()
    return out


def slow_reader(port, secs, args):
    req = bytes.fromhex(args["request"])
    n_streams = args.get("streams", 4)
    open_window = args.get("open_window", False)
    conns = []
    out = {"connections": 0, "ends": {}, "data_bytes": 0, "header_frames": 0}
    for _ in range(args.get("conns", 2)):
        window = MAX_WINDOW if open_window else 0
        w = handshake(port, settings={int(SET.INITIAL_WINDOW_SIZE): window})
        if open_window:  # the connection's window too, from its initial 65,535 bytes
            w.send(w.window_update_frame(0, MAX_WINDOW - 65535))
        out["connections"] += 1
        w.sids = [w.request(GENERATE, req) for _ in range(n_streams)]
        conns.append(w)
    print(json.dumps({"started": True}), flush=True)
    end = time.monotonic() + secs
    while time.monotonic() < end:
        for w in conns:
            w.pump(0.05)
    out["finished_ok"] = 0
    for w in conns:
        out["data_bytes"] += sum(len(d) for d in w.data.values())
        out["header_frames"] += sum(len(h) for h in w.headers.values())
        out["finished_ok"] += sum(w.status(sid) == 0 for sid in w.sids)
        how = ended(w) or "open"
        out["ends"][how] = out["ends"].get(how, 0) + 1
        w.close()
    return out


def oversized(port, secs, args):
    n = args.get("streams", 4)
    big = grpc_body(b"\x0a" + b"\xff" * ((4 << 20) + 1024))  # 4 MiB + 1 KiB message
    declared = b"\x00" + (16 << 20).to_bytes(4, "big") + b"\x0a\x00"  # says 16 MiB, is 2 bytes
    out = {"connections": 0, "ends": {}, "statuses": {}, "requests": 0}
    for _ in fresh_connections(secs, args):
        w = handshake(port)
        out["connections"] += 1
        sids = []
        for i in range(n):
            sid = w.new_sid()
            body = big if i % 2 == 0 else declared
            if not w.send(w.headers_frame(sid, TOKENIZE) + w.data_frames(sid, body)):
                break
            sids.append(sid)
            w.pump(0)
        w.wait_for(lambda: all(w.status(s) is not None or s in w.resets for s in sids), 10.0)
        for s in sids:
            st = w.status(s)
            key = str(st) if st is not None else ("rst" if s in w.resets else "none")
            out["statuses"][key] = out["statuses"].get(key, 0) + 1
            out["requests"] += 1
        how = "refused" if all(w.status(s) == 8 for s in sids) else (ended(w) or "open")
        out["ends"][how] = out["ends"].get(how, 0) + 1
        w.close()
    return out


def half_open(port, secs, args):
    import socket
    n = args.get("conns", 60)
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        kind = i % 3
        if kind == 1:
            s.sendall(b"PRI * HTTP/2.0\r\n")  # half a preface
        elif kind == 2:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        socks.append(s)
    print(json.dumps({"started": True}), flush=True)
    time.sleep(secs)
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    closed += 1
                    break
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    return {"connections": n, "ends": {"closed": closed, "open": n - closed}}


MODES = {f.__name__: f for f in (rapid_reset, ping_burst, ping_paced, streams, slow_reader,
                                 oversized, half_open)}

if __name__ == "__main__":
    mode, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    args = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    t0 = time.monotonic()
    result = MODES[mode](port, secs, args)
    result["mode"] = mode
    result["elapsed_s"] = round(time.monotonic() - t0, 3)
    print(json.dumps(result), flush=True)
