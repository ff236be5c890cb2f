"""Raw HTTP/2 over a plain socket, for the abuse tests: frames are built with hyperframe and
header blocks with hpack (the frame and HPACK layers of the `h2` package from PyPI, installed
with it), so a test can send what a correct client never would -- thousands of resets, pings
without end, streams past the peer's limit, windows never opened -- and read back every frame
the daemon answers with, whatever state h2's own state machine would think the connection is in.

Nothing here imports grpc, so the abuse can run in a child process (see abuse.py) without the
gRPC runtime's threads, and the daemon's other clients are measured in another process.
"""
import select
import socket
import struct
import time

import h2.errors
import h2.settings
import hpack
import hyperframe.frame as hf

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ERR = h2.errors.ErrorCodes
SET = h2.settings.SettingCodes


def grpc_body(message):
    """A gRPC length-prefixed message: 1 byte compressed flag, 4 bytes big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def frame_bytes(frame):
    return frame.serialize()


def ping_frame(opaque=b"pdstress", ack=False):
    f = hf.PingFrame(0)
    f.opaque_data = opaque
    if ack:
        f.flags.add("ACK")
    return f.serialize()


class Wire:
    """One HTTP/2 client connection driven frame by frame.

    State kept from what the server sent: `goaway` (error code, last stream id) once a GOAWAY
    came, `closed` once the socket reached EOF or was reset, `resets` {stream id: error code},
    `headers` {stream id: [decoded header lists]} (response headers and trailers), `data`
    {stream id: bytes}, `ping_acks`, `window` (the server's connection window for our sends
    is not tracked: the tests send small bodies or rely on the server's automatic updates).
    """

    def __init__(self, port, host="127.0.0.1", timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.buf = b""
        self.goaway = None
        self.closed = False
        self.resets = {}
        self.headers = {}
        self.data = {}
        self.ping_acks = 0
        self.server_settings = {}
        self.settings_acked = False
        self.window_updates = 0
        self.next_sid = 1
        self.bytes_in = 0

    # ---- sending ---------------------------------------------------------------------------
    def send(self, data):
        """Sends bytes; returns False (and marks the connection closed) if the peer is gone."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            self.closed = True
            return False

    def preface(self, settings=None):
        f = hf.SettingsFrame(0)
        f.settings = dict(settings or {})
        return self.send(PREFACE + f.serialize())

    def settings_ack(self):
        f = hf.SettingsFrame(0)
        f.flags.add("ACK")
        return self.send(f.serialize())

    def new_sid(self):
        sid = self.next_sid
        self.next_sid += 2
        return sid

    def headers_frame(self, sid, path, end_stream=False, extra=(), authority="prefixd"):
        hdrs = [(":method", "POST"), (":scheme", "http"), (":path", path),
                (":authority", authority), ("content-type", "application/grpc"),
                ("te", "trailers"), *extra]
        f = hf.HeadersFrame(sid)
        f.data = self.enc.encode(hdrs)
        f.flags.add("END_HEADERS")
        if end_stream:
            f.flags.add("END_STREAM")
        return f.serialize()

    def data_frames(self, sid, payload, end_stream=True, max_frame=16384):
        out = []
        for i in range(0, max(len(payload), 1), max_frame):
            f = hf.DataFrame(sid)
            f.data = payload[i:i + max_frame]
            if end_stream and i + max_frame >= len(payload):
                f.flags.add("END_STREAM")
            out.append(f.serialize())
        return b"".join(out)

    def rst_frame(self, sid, code=ERR.CANCEL):
        f = hf.RstStreamFrame(sid)
        f.error_code = int(code)
        return f.serialize()

    def window_update_frame(self, sid, increment):
        f = hf.WindowUpdateFrame(sid)
        f.window_increment = increment
        return f.serialize()

    def request(self, path, message, extra=()):
        """Sends a whole unary request (HEADERS + one DATA with END_STREAM); returns its id."""
        sid = self.new_sid()
        self.send(self.headers_frame(sid, path, extra=extra) +
                  self.data_frames(sid, grpc_body(message)))
        return sid

    # ---- receiving -------------------------------------------------------------------------
    def _handle(self, ftype, flags, sid, body):
        if ftype == 0x4:  # SETTINGS
            if flags & 0x1:
                self.settings_acked = True
            else:
                for i in range(0, len(body) - len(body) % 6, 6):
                    ident, value = struct.unpack(">HI", body[i:i + 6])
                    self.server_settings[ident] = value
                self.settings_ack()
        elif ftype == 0x7:  # GOAWAY
            last, code = struct.unpack(">II", body[:8])
            self.goaway = (code, last & 0x7FFFFFFF)
        elif ftype == 0x3:  # RST_STREAM
            self.resets[sid] = struct.unpack(">I", body[:4])[0]
        elif ftype == 0x6:  # PING
            if flags & 0x1:
                self.ping_acks += 1
        elif ftype == 0x1:  # HEADERS (END_HEADERS always set by nghttp2 for small blocks)
            data = body
            if flags & 0x8:  # PADDED
                pad = data[0]
                data = data[1:len(data) - pad]
            if flags & 0x20:  # PRIORITY
                data = data[5:]
            self.headers.setdefault(sid, []).append(dict(self.dec.decode(data)))
        elif ftype == 0x0:  # DATA
            self.data[sid] = self.data.get(sid, b"") + body
        elif ftype == 0x8:
            self.window_updates += 1

    def _parse(self):
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                return
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            body = self.buf[9:9 + length]
            self.buf = self.buf[9 + length:]
            self._handle(ftype, flags, sid, body)

    def pump(self, timeout=0.0):
        """Reads what has arrived (waiting up to timeout for the first bytes). Returns the number
        of bytes read; marks `closed` at EOF or reset."""
        if self.closed:
            return 0
        got = 0
        wait = timeout
        while True:
            try:
                r, _, _ = select.select([self.sock], [], [], wait)
            except (OSError, ValueError):
                self.closed = True
                return got
            if not r:
                return got
            try:
                chunk = self.sock.recv(1 << 20)
            except (ConnectionResetError, OSError):
                self.closed = True
                return got
            if not chunk:
                self.closed = True
                return got
            got += len(chunk)
            self.bytes_in += len(chunk)
            self.buf += chunk
            self._parse()
            wait = 0.0

    def wait_for(self, cond, timeout):
        """Pumps until cond() is true, the connection ends, or timeout; returns cond()."""
        end = time.monotonic() + timeout
        while not cond() and not self.closed and time.monotonic() < end:
            self.pump(min(0.05, max(0.0, end - time.monotonic())))
        return cond()

    def wait_end(self, timeout):
        """Waits for the server to end the connection: returns 'goaway', 'closed' or None."""
        self.wait_for(lambda: self.goaway is not None, timeout)
        if self.goaway is not None:
            return "goaway"
        return "closed" if self.closed else None

    def status(self, sid):
        """The grpc-status the server sent on a stream (trailers or trailers-only), or None."""
        for h in self.headers.get(sid, []):
            if "grpc-status" in h:
                return int(h["grpc-status"])
        return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
