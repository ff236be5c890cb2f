/*
 * pd_failalloc.c -- LD_PRELOAD library for tests: fails exactly the N-th heap allocation of a
 * process from the moment a test arms it, once, and says whether it fired and where.
 *
 * DESIGN
 *
 * Interposes malloc, calloc, realloc, reallocarray, posix_memalign, aligned_alloc, memalign,
 * valloc, pvalloc and free (glibc's own internal allocations -- strdup, fopen, ... -- go through
 * these symbols too). The real functions are found with dlsym(RTLD_NEXT): glibc's, or the
 * sanitizer's when the daemon is an ASan build (then run with
 * ASAN_OPTIONS=verify_asan_link_order=0), so ASan still sees every block. dlsym may itself
 * allocate: while the real functions are being looked up (a thread-local flag), requests are
 * served from a small static arena, whose blocks free() ignores.
 *
 * CONTROL. No signals: the library maps a control file (its path in PD_FAILALLOC_CTL) shared
 * with the test, and every allocation reads one word of it, so arming costs the daemon nothing
 * and is async-signal-safe by construction (loads and atomic adds on a shared page; no lock, no
 * system call, no allocation). The test arms N by writing count = 0, fired = 0, then arm_n = N;
 * each counted allocation adds one to count, and the one that makes count equal arm_n returns
 * NULL (errno ENOMEM), sets fired and records its kind, size, thread and a backtrace of the
 * callers outside this library (libgcc's _Unwind_Backtrace, which allocates nothing; glibc's
 * backtrace() would dlopen libgcc_s on its first call, from inside malloc).
 * Writing arm_n = 0 disarms. Counters and the record live in the file, so they survive a crash
 * of the process: the test reads where the failure was even when it killed the daemon.
 *
 * SCOPE. An allocation is counted unless its immediate caller lies in a loaded object whose
 * path contains one of the comma-separated names in PD_FAILALLOC_EXCLUDE (matched once, at
 * load, against dl_iterate_phdr's list; objects loaded later are always counted). This is how a
 * library that aborts on allocation failure, which the daemon cannot fix, is left out: only
 * that object's own calls to malloc are exempt, not what it asks of others. Counted and exempt
 * allocations are both tallied.
 *
 * LIVE. The file also keeps the number of live heap blocks (allocations minus frees) for a
 * leak check: at two moments when the daemon is idle it must be the same.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_NEXT, dl_iterate_phdr */
#endif
#include <dlfcn.h>
#include <errno.h>
#include <unwind.h>
#include <fcntl.h>
#include <link.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PD_FA_MAGIC  0x31636f6c6c616670ull /* "pfalloc1" */
#define PD_FA_FRAMES 32

/* The control file's layout; the test (tests/faults/failalloc.py) mirrors it. */
typedef struct pd_fa_ctl {
  uint64_t magic;                /* written by the library once mapped */
  _Atomic uint64_t arm_n;        /* test: 0 = disarmed, else fail the N-th from now */
  _Atomic uint64_t count;        /* counted allocations since armed (test resets it) */
  _Atomic uint64_t fired;        /* 1 once the N-th failed (test resets it) */
  uint64_t fired_kind;           /* which function: 1 malloc, 2 calloc, 3 realloc, ... */
  uint64_t fired_size;           /* bytes asked for */
  uint64_t fired_tid;            /* the thread (gettid) */
  uint64_t fired_caller;         /* the immediate caller's address */
  uint64_t n_frames;             /* of frames */
  uint64_t frames[PD_FA_FRAMES]; /* return addresses: the allocation's caller first */
  _Atomic uint64_t exempt;       /* allocations not counted (PD_FAILALLOC_EXCLUDE) */
  _Atomic int64_t live;          /* heap blocks allocated and not freed */
  _Atomic uint64_t total;        /* every allocation request since load */
} pd_fa_ctl;

enum { K_MALLOC = 1, K_CALLOC, K_REALLOC, K_REALLOCARRAY, K_MEMALIGN, K_POSIX_MEMALIGN };

static pd_fa_ctl *ctl; /* NULL: no control file; everything passes through */

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static void *(*real_memalign)(size_t, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);

/* ---- bootstrap arena (while dlsym runs) ---------------------------------------------------- */

static _Alignas(64) unsigned char arena[64 * 1024];
static atomic_size_t arena_used;
static __thread int resolving __attribute__((tls_model("initial-exec")));

static int in_arena(const void *p) {
  return (const unsigned char *)p >= arena && (const unsigned char *)p < arena + sizeof arena;
}

/* 16-byte header holding the size, so realloc can copy out of the arena. */
static void *arena_alloc(size_t n, size_t align) {
  if (align < 16) align = 16;
  size_t need = ((n + 15) & ~(size_t)15) + 16 + align; /* header, then up to align to skip */
  size_t at = atomic_fetch_add(&arena_used, need);
  if (at + need > sizeof arena) return NULL;
  uintptr_t p = ((uintptr_t)(arena + at) + 16 + align - 1) & ~(uintptr_t)(align - 1);
  ((size_t *)p)[-1] = n;
  return (void *)p; /* zeroed: static storage never reused */
}

static void resolve(void) {
  if (real_free) return;
  resolving = 1;
  real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
  real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
  real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
  real_memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
  real_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
  real_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
  real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
  resolving = 0;
}

/* ---- scope: which callers are exempt -------------------------------------------------------- */

static uintptr_t self_lo, self_hi; /* this library's code: its frames are left out */

#define MAX_EXEMPT 16
static struct { uintptr_t lo, hi; } exempt_ranges[MAX_EXEMPT];
static int n_exempt;
static const char *exclude_list; /* from the environment, read once in the constructor */

static int name_listed(const char *path) {
  if (!exclude_list || !path || !path[0]) return 0;
  for (const char *p = exclude_list; *p;) {
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n) {
      for (const char *s = path; *s; s++)
        if (!strncmp(s, p, n)) return 1;
    }
    if (!end) break;
    p = end + 1;
  }
  return 0;
}

static int note_object(struct dl_phdr_info *info, size_t size, void *arg) {
  for (int i = 0; i < info->dlpi_phnum; i++) { /* this library's own code */
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
    if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X) && (uintptr_t)arg >= lo &&
        (uintptr_t)arg < hi) {
      self_lo = lo;
      self_hi = hi;
    }
  }
  if (!name_listed(info->dlpi_name)) return 0;
  for (int i = 0; i < info->dlpi_phnum && n_exempt < MAX_EXEMPT; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
    exempt_ranges[n_exempt].lo = info->dlpi_addr + ph->p_vaddr;
    exempt_ranges[n_exempt].hi = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
    n_exempt++;
  }
  return 0;
}

static int exempt(const void *caller) {
  uintptr_t a = (uintptr_t)caller;
  for (int i = 0; i < n_exempt; i++)
    if (a >= exempt_ranges[i].lo && a < exempt_ranges[i].hi) return 1;
  return 0;
}

/* ---- the backtrace -------------------------------------------------------------------------- */

struct stack {
  uint64_t n;
};

static _Unwind_Reason_Code unwind_step(struct _Unwind_Context *uc, void *arg) {
  struct stack *st = arg;
  uintptr_t ip = (uintptr_t)_Unwind_GetIP(uc);
  if (!ip) return _URC_END_OF_STACK;
  if (ip >= self_lo && ip < self_hi) return _URC_NO_REASON;
  ctl->frames[st->n++] = (uint64_t)ip;
  return st->n < PD_FA_FRAMES ? _URC_NO_REASON : _URC_END_OF_STACK;
}

/* ---- the decision --------------------------------------------------------------------------- */

/* 1 if this allocation must fail. */
static int must_fail(int kind, size_t size, const void *caller) {
  if (!ctl) return 0;
  atomic_fetch_add_explicit(&ctl->total, 1, memory_order_relaxed);
  uint64_t n = atomic_load_explicit(&ctl->arm_n, memory_order_acquire);
  if (!n || resolving) return 0;
  if (exempt(caller)) {
    atomic_fetch_add_explicit(&ctl->exempt, 1, memory_order_relaxed);
    return 0;
  }
  if (atomic_fetch_add_explicit(&ctl->count, 1, memory_order_relaxed) + 1 != n) return 0;
  ctl->fired_kind = (uint64_t)kind;
  ctl->fired_size = size;
  ctl->fired_tid = (uint64_t)syscall(SYS_gettid);
  ctl->fired_caller = (uint64_t)(uintptr_t)caller;
  struct stack st = {0};
  _Unwind_Backtrace(unwind_step, &st);
  ctl->n_frames = st.n;
  atomic_store_explicit(&ctl->fired, 1, memory_order_release);
  errno = ENOMEM;
  return 1;
}

static void *note_live(void *p) {
  if (p && ctl) atomic_fetch_add_explicit(&ctl->live, 1, memory_order_relaxed);
  return p;
}

/* ---- the interposed functions --------------------------------------------------------------- */

void *malloc(size_t n) {
  if (!real_malloc) {
    if (resolving) return arena_alloc(n, 16);
    resolve();
  }
  if (must_fail(K_MALLOC, n, __builtin_return_address(0))) return NULL;
  return note_live(real_malloc(n));
}

void *calloc(size_t k, size_t n) {
  if (!real_calloc) {
    if (resolving) return n && k > SIZE_MAX / n ? NULL : arena_alloc(k * n, 16);
    resolve();
  }
  if (must_fail(K_CALLOC, k * n, __builtin_return_address(0))) return NULL;
  return note_live(real_calloc(k, n));
}

void free(void *p) {
  if (!p || in_arena(p)) return;
  if (!real_free) resolve();
  if (ctl) atomic_fetch_sub_explicit(&ctl->live, 1, memory_order_relaxed);
  real_free(p);
}

static void *realloc_at(void *p, size_t n, int kind, const void *caller) {
  if (!real_realloc) {
    if (resolving) {
      void *q = arena_alloc(n, 16);
      if (q && p) memcpy(q, p, ((size_t *)p)[-1] < n ? ((size_t *)p)[-1] : n);
      return q;
    }
    resolve();
  }
  if (p && in_arena(p)) { /* out of the arena for good */
    if (must_fail(kind, n, caller)) return NULL;
    void *q = note_live(real_malloc(n ? n : 1));
    if (q) memcpy(q, p, ((size_t *)p)[-1] < n ? ((size_t *)p)[-1] : n);
    return q;
  }
  if (p && n == 0) { /* glibc frees and returns NULL */
    free(p);
    return NULL;
  }
  if (must_fail(kind, n, caller)) return NULL;
  void *q = real_realloc(p, n);
  if (!p) note_live(q);
  return q;
}

void *realloc(void *p, size_t n) {
  return realloc_at(p, n, K_REALLOC, __builtin_return_address(0));
}

void *reallocarray(void *p, size_t k, size_t n) {
  if (n && k > SIZE_MAX / n) {
    errno = ENOMEM;
    return NULL;
  }
  return realloc_at(p, k * n, K_REALLOCARRAY, __builtin_return_address(0));
}

static void *memalign_at(size_t align, size_t n, const void *caller) {
  if (!real_memalign) {
    if (resolving) return arena_alloc(n, align);
    resolve();
  }
  if (must_fail(K_MEMALIGN, n, caller)) return NULL;
  return note_live(real_memalign(align, n));
}

void *memalign(size_t align, size_t n) {
  return memalign_at(align, n, __builtin_return_address(0));
}

void *aligned_alloc(size_t align, size_t n) {
  if (!real_aligned_alloc) {
    if (resolving) return arena_alloc(n, align);
    resolve();
  }
  if (must_fail(K_MEMALIGN, n, __builtin_return_address(0))) return NULL;
  return note_live(real_aligned_alloc(align, n));
}

int posix_memalign(void **out, size_t align, size_t n) {
  if (!real_posix_memalign) {
    if (resolving) {
      *out = arena_alloc(n, align);
      return *out ? 0 : ENOMEM;
    }
    resolve();
  }
  if (must_fail(K_POSIX_MEMALIGN, n, __builtin_return_address(0))) return ENOMEM;
  int rc = real_posix_memalign(out, align, n);
  if (!rc) note_live(*out);
  return rc;
}

void *valloc(size_t n) {
  return memalign_at((size_t)sysconf(_SC_PAGESIZE), n, __builtin_return_address(0));
}

void *pvalloc(size_t n) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return memalign_at(page, (n + page - 1) & ~(page - 1), __builtin_return_address(0));
}

/* ---- load ----------------------------------------------------------------------------------- */

__attribute__((constructor)) static void pd_failalloc_init(void) {
  resolve();
  exclude_list = getenv("PD_FAILALLOC_EXCLUDE");
  dl_iterate_phdr(note_object, (void *)(uintptr_t)&must_fail);
  const char *path = getenv("PD_FAILALLOC_CTL");
  if (!path || !path[0]) return;
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return;
  void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (m == MAP_FAILED) return;
  pd_fa_ctl *c = m;
  c->magic = PD_FA_MAGIC;
  ctl = c;
}
