"""The test's side of libpd_failalloc.so (pd_failalloc.c): the shared control file, and the
symbolization of the backtrace it records when the armed allocation fails.

The file is one page of little-endian 64-bit words; the layout mirrors struct pd_fa_ctl. The
test writes arm_n (after zeroing count and fired); the library writes everything else.
"""
import bisect
import mmap
import os
import struct
import subprocess

MAGIC = 0x31636F6C6C616670
FRAMES = 32
_OFF = {"magic": 0, "arm_n": 8, "count": 16, "fired": 24, "fired_kind": 32, "fired_size": 40,
        "fired_tid": 48, "fired_caller": 56, "n_frames": 64, "frames": 72}
_OFF["exempt"] = _OFF["frames"] + 8 * FRAMES
_OFF["live"] = _OFF["exempt"] + 8
_OFF["total"] = _OFF["live"] + 8
KINDS = {1: "malloc", 2: "calloc", 3: "realloc", 4: "reallocarray", 5: "memalign",
         6: "posix_memalign"}


class Control:
    """The control page. Create it before the daemon starts (PD_FAILALLOC_CTL=path)."""

    def __init__(self, path):
        self.path = path
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
        self._f = open(path, "r+b")
        self._m = mmap.mmap(self._f.fileno(), 4096)

    def close(self):
        self._m.close()
        self._f.close()

    def _get(self, name, signed=False):
        return struct.unpack_from("<q" if signed else "<Q", self._m, _OFF[name])[0]

    def _set(self, name, value):
        struct.pack_into("<Q", self._m, _OFF[name], value)

    def loaded(self):
        """True once the library in the daemon mapped the file."""
        return self._get("magic") == MAGIC

    def arm(self, n):
        """Fail the n-th counted allocation from now (once)."""
        self._set("arm_n", 0)
        self._set("count", 0)
        self._set("fired", 0)
        self._set("n_frames", 0)
        self._set("arm_n", n)

    def disarm(self):
        self._set("arm_n", 0)

    def count(self):
        return self._get("count")

    def fired(self):
        return self._get("fired") != 0

    def live(self):
        """Heap blocks allocated and not freed since the library was loaded (a difference between
        two idle moments is what means something)."""
        return self._get("live", signed=True)

    def total(self):
        return self._get("total")

    def exempt(self):
        return self._get("exempt")

    def record(self):
        """What the failed allocation was: kind, size, thread, caller, backtrace addresses."""
        n = min(self._get("n_frames"), FRAMES)
        frames = [struct.unpack_from("<Q", self._m, _OFF["frames"] + 8 * i)[0] for i in range(n)]
        return {"kind": KINDS.get(self._get("fired_kind"), "?"), "size": self._get("fired_size"),
                "tid": self._get("fired_tid"), "caller": self._get("fired_caller"),
                "frames": frames}


class Symbolizer:
    """Turns addresses of a live process into 'function (object+offset)' with addr2line, from a
    copy of /proc/PID/maps taken while the process ran."""

    def __init__(self, pid):
        self.maps = []  # (start, end, base, path)
        bases = {}
        exe = f"/proc/{pid}/exe"
        with open(f"/proc/{pid}/maps") as f:
            rows = [line.split() for line in f]
        for r in rows:
            if len(r) < 6 or not r[5].startswith("/"):
                continue
            start, end = (int(x, 16) for x in r[0].split("-"))
            path = r[5]
            if r[-1] == "(deleted)" or os.path.realpath(path) == os.path.realpath(exe):
                path = exe  # the running binary, even if the file was rebuilt since
            bases[path] = min(bases.get(path, start), start - int(r[2], 16))
            self.maps.append((start, end, path))
        self.maps.sort()
        self.bases = bases
        self._starts = [m[0] for m in self.maps]

    def where(self, addr):
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0 or addr >= self.maps[i][1]:
            return None, addr
        path = self.maps[i][2]
        return path, addr - self.bases[path]

    def name(self, addr):
        path, off = self.where(addr)
        if not path:
            return f"0x{addr:x}"
        fn = "??"
        try:
            out = subprocess.run(["addr2line", "-f", "-C", "-e", path, hex(max(off - 1, 0))],
                                 capture_output=True, text=True, timeout=10).stdout.split("\n")
            fn = out[0] if out and out[0] else "??"
        except (OSError, subprocess.SubprocessError):
            pass
        return f"{fn} ({os.path.basename(path)}+0x{off:x})"

    def stack(self, frames):
        return [self.name(a) for a in frames]
