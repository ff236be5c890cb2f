/*
 * pd_blockfile.c -- the disk tier's payload file. See pd_blockfile.h for the contract.
 *
 * Two descriptors on one file: `fd` (O_DIRECT when the filesystem takes it) for every write and
 * for reads into page-aligned buffers, `fd_cached` (plain) for reads into buffers that are not.
 * The kernel keeps the two coherent: an O_DIRECT write invalidates cached pages of its range.
 *
 * The bitmap has one bit per page of the file (1 = in use) and grows with it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* O_DIRECT, fallocate */
#endif
#include "pd_blockfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "pd_err.h"

#define GROW_STEP_PAGES ((64u << 20) / PD_BLOCKFILE_PAGE)
#define BOUNCE_BYTES    (16u << 20)
#define MAX_IOV         (IOV_MAX < 1024 ? IOV_MAX : 1024)

struct pd_blockfile {
  int fd, fd_cached, direct;
  pthread_mutex_t mu; /* guards the bitmap and the sizes below it */
  uint64_t *bits;     /* (cap_words) 1 bit per page, 1 = in use */
  uint64_t cap_words;
  uint64_t file_pages, used_pages, cursor;
  uint8_t *bounce; /* (BOUNCE_BYTES) page-aligned; the writer's only */
  pthread_mutex_t read_mu;
  uint8_t *read_bounce; /* (BOUNCE_BYTES) page-aligned, allocated on first need; under read_mu */
};

static int bit(const pd_blockfile *f, uint64_t p) {
  return (int)((f->bits[p >> 6] >> (p & 63)) & 1);
}
static void set_bits(pd_blockfile *f, uint64_t p, uint64_t n, int on) {
  for (uint64_t i = p; i < p + n; i++) {
    if (on)
      f->bits[i >> 6] |= 1ull << (i & 63);
    else
      f->bits[i >> 6] &= ~(1ull << (i & 63));
  }
}

/* Makes the bitmap cover pages [0, n_pages). */
static int ensure_bits(pd_blockfile *f, uint64_t n_pages) {
  uint64_t words = (n_pages + 63) / 64;
  if (words <= f->cap_words) return PD_OK;
  uint64_t ncap = f->cap_words ? f->cap_words : 64;
  while (ncap < words) ncap *= 2;
  uint64_t *nb = realloc(f->bits, ncap * sizeof *nb);
  if (!nb) return PD_ENOMEM;
  memset(nb + f->cap_words, 0, (ncap - f->cap_words) * sizeof *nb);
  f->bits = nb;
  f->cap_words = ncap;
  return PD_OK;
}

int pd_blockfile_open(const char *path, int try_direct, pd_blockfile **out, char *err,
                      size_t errlen) {
  *out = NULL;
  pd_blockfile *f = calloc(1, sizeof *f);
  if (!f) return pd_errf(err, errlen, PD_ENOMEM, "blockfile: out of memory");
  f->fd = f->fd_cached = -1;
  pthread_mutex_init(&f->mu, NULL);
  if (try_direct) f->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_DIRECT, 0600);
  f->direct = f->fd >= 0;
  if (f->fd < 0 && (!try_direct || errno == EINVAL))
    f->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (f->fd < 0) goto fail_errno;
  if ((f->fd_cached = open(path, O_RDONLY | O_CLOEXEC)) < 0) goto fail_errno;
  struct stat st;
  if (fstat(f->fd, &st) != 0) goto fail_errno;
  f->file_pages = (uint64_t)st.st_size / PD_BLOCKFILE_PAGE;
  if (posix_memalign((void **)&f->bounce, PD_BLOCKFILE_PAGE, BOUNCE_BYTES) ||
      ensure_bits(f, f->file_pages)) {
    f->bounce = NULL;
    pd_blockfile_close(f);
    return pd_errf(err, errlen, PD_ENOMEM, "blockfile: out of memory");
  }
  *out = f;
  return PD_OK;
fail_errno : {
  int e = errno;
  pd_blockfile_close(f);
  return pd_errf(err, errlen, pd_err_from_errno(e), "blockfile: %s: %s", path, strerror(e));
}
}

void pd_blockfile_close(pd_blockfile *f) {
  if (!f) return;
  if (f->fd >= 0) close(f->fd);
  if (f->fd_cached >= 0) close(f->fd_cached);
  pthread_mutex_destroy(&f->mu);
  pthread_mutex_destroy(&f->read_mu);
  free(f->bits);
  free(f->bounce);
  free(f->read_bounce);
  free(f);
}

int pd_blockfile_direct(const pd_blockfile *f) {
  return f->direct;
}

/* ---- the bitmap ------------------------------------------------------------------------------ */

int pd_blockfile_claim(pd_blockfile *f, uint64_t page, uint64_t n_pages) {
  pthread_mutex_lock(&f->mu);
  int rc = PD_OK;
  if (page > f->file_pages || n_pages > f->file_pages - page) {
    rc = PD_ERANGE;
  } else {
    for (uint64_t p = page; p < page + n_pages && rc == PD_OK; p++)
      if (bit(f, p)) rc = PD_EEXIST;
    if (rc == PD_OK) {
      set_bits(f, page, n_pages, 1);
      f->used_pages += n_pages;
    }
  }
  pthread_mutex_unlock(&f->mu);
  return rc;
}

/* The first run of n free pages in [from, to), or 0 with *at untouched. Whole words in use are
 * skipped 64 pages at a time. */
static int find_run(const pd_blockfile *f, uint64_t from, uint64_t to, uint64_t n, uint64_t *at) {
  uint64_t run = 0;
  for (uint64_t p = from; p < to;) {
    if ((p & 63) == 0 && p + 64 <= to && f->bits[p >> 6] == ~0ull) {
      run = 0;
      p += 64;
      continue;
    }
    if (bit(f, p)) {
      run = 0;
    } else if (++run == n) {
      *at = p + 1 - n;
      return 1;
    }
    p++;
  }
  return 0;
}

/* Grows the file to new_pages pages (fallocate, or ftruncate where it is not supported). */
static int grow(pd_blockfile *f, uint64_t new_pages) {
  int rc = ensure_bits(f, new_pages);
  if (rc) return rc;
  off_t from = (off_t)(f->file_pages * PD_BLOCKFILE_PAGE);
  off_t len = (off_t)((new_pages - f->file_pages) * PD_BLOCKFILE_PAGE);
  if (fallocate(f->fd, 0, from, len) != 0) {
    if (errno != EOPNOTSUPP && errno != ENOSYS) return pd_err_from_errno(errno);
    if (ftruncate(f->fd, from + len) != 0) return pd_err_from_errno(errno);
  }
  f->file_pages = new_pages;
  return PD_OK;
}

int pd_blockfile_alloc(pd_blockfile *f, uint64_t n_pages, uint64_t limit_pages, uint64_t *page) {
  if (n_pages == 0) return PD_EINVAL;
  pthread_mutex_lock(&f->mu);
  /* a file longer than the limit (the budget was lowered) is used only up to the limit */
  uint64_t file_end = f->file_pages, end = file_end < limit_pages ? file_end : limit_pages;
  uint64_t at = 0, cursor = f->cursor < end ? f->cursor : 0;
  int found = find_run(f, cursor, end, n_pages, &at) ||
              find_run(f, 0, cursor + n_pages - 1 < end ? cursor + n_pages - 1 : end, n_pages, &at);
  int rc = PD_OK;
  if (!found) {
    /* grow: the run ends at the new end of the file, starting in the free tail if there is one */
    uint64_t tail = 0;
    while (tail < file_end && tail < n_pages && !bit(f, file_end - 1 - tail)) tail++;
    /* steps of 64 MiB, or a sixteenth of the limit if smaller: the caller's limit is checked
     * again at each step, so the file does not run ahead of what else shares the budget */
    uint64_t need = n_pages - tail, step = limit_pages / 16;
    if (step > GROW_STEP_PAGES) step = GROW_STEP_PAGES;
    if (step < need) step = need;
    if (file_end >= limit_pages || file_end + need > limit_pages) {
      rc = PD_EFULL;
    } else {
      if (file_end + step > limit_pages) step = limit_pages - file_end;
      rc = grow(f, file_end + step);
      /* a file system too full for a whole step may still hold this extent */
      if (rc == PD_ENOSPC && step > need) rc = grow(f, file_end + need);
      at = file_end - tail;
    }
  }
  if (rc == PD_OK) {
    set_bits(f, at, n_pages, 1);
    f->used_pages += n_pages;
    f->cursor = at + n_pages;
    *page = at;
  }
  pthread_mutex_unlock(&f->mu);
  return rc;
}

int pd_blockfile_trim(pd_blockfile *f, uint64_t keep_pages) {
  pthread_mutex_lock(&f->mu);
  uint64_t last_used = f->file_pages;
  while (last_used > keep_pages && !bit(f, last_used - 1)) last_used--;
  int rc = PD_OK;
  if (last_used < f->file_pages) {
    if (ftruncate(f->fd, (off_t)(last_used * PD_BLOCKFILE_PAGE)) == 0)
      f->file_pages = last_used;
    else
      rc = pd_err_from_errno(errno);
  }
  if (f->cursor > f->file_pages) f->cursor = 0;
  pthread_mutex_unlock(&f->mu);
  return rc;
}

void pd_blockfile_release(pd_blockfile *f, uint64_t page, uint64_t n_pages) {
  pthread_mutex_lock(&f->mu);
  if (page <= f->file_pages && n_pages <= f->file_pages - page) {
    for (uint64_t p = page; p < page + n_pages; p++)
      if (bit(f, p)) f->used_pages--;
    set_bits(f, page, n_pages, 0);
  }
  pthread_mutex_unlock(&f->mu);
}

void pd_blockfile_usage(pd_blockfile *f, uint64_t *used_pages, uint64_t *file_pages) {
  pthread_mutex_lock(&f->mu);
  if (used_pages) *used_pages = f->used_pages;
  if (file_pages) *file_pages = f->file_pages;
  pthread_mutex_unlock(&f->mu);
}

/* ---- I/O ------------------------------------------------------------------------------------- */

/* One run of adjacent pages being gathered into a pwritev. */
typedef struct write_run {
  struct iovec iov[MAX_IOV];
  int n_iov;
  uint64_t first_page, n_pages;
  size_t bounce_used;
} write_run;

/* pwritev / preadv of all of iov (n entries, modified) at off, resuming after short transfers.
 * A read that meets the end of the file is PD_ECORRUPT (the index names bytes the file does not
 * have); a write that makes no progress, PD_EIO. */
static int vector_io(int fd, int writing, struct iovec *iov, int n, off_t off) {
  while (n > 0) {
    ssize_t done = writing ? pwritev(fd, iov, n, off) : preadv(fd, iov, n, off);
    if (done < 0 && errno == EINTR) continue;
    if (done < 0) return pd_err_from_errno(errno);
    if (done == 0) return writing ? PD_EIO : PD_ECORRUPT;
    off += done;
    while (n > 0 && (size_t)done >= iov->iov_len) done -= (ssize_t)iov->iov_len, iov++, n--;
    if (n > 0) iov->iov_base = (uint8_t *)iov->iov_base + done, iov->iov_len -= (size_t)done;
  }
  return PD_OK;
}

static int flush_run(pd_blockfile *f, write_run *r) {
  int rc = vector_io(f->fd, 1, r->iov, r->n_iov, (off_t)(r->first_page * PD_BLOCKFILE_PAGE));
  if (rc) return rc;
  r->n_iov = 0;
  r->n_pages = 0;
  r->bounce_used = 0;
  return PD_OK;
}

static const uint8_t zero_page[PD_BLOCKFILE_PAGE];

/* Adds [src, src + n) (whole pages once padded) to the run at its end. */
static int add_piece(pd_blockfile *f, write_run *r, const uint8_t *src, size_t n) {
  size_t padded = (size_t)pd_blockfile_pages(n) * PD_BLOCKFILE_PAGE;
  int as_is = !f->direct || ((uintptr_t)src % PD_BLOCKFILE_PAGE == 0 && n == padded);
  int rc;
  if (r->n_iov + 2 > MAX_IOV || (!as_is && r->bounce_used + padded > BOUNCE_BYTES)) {
    uint64_t next = r->first_page + r->n_pages;
    if ((rc = flush_run(f, r))) return rc;
    r->first_page = next;
  }
  if (as_is) {
    r->iov[r->n_iov++] = (struct iovec){(void *)src, n};
    if (padded > n) r->iov[r->n_iov++] = (struct iovec){(void *)zero_page, padded - n};
  } else {
    uint8_t *dst = f->bounce + r->bounce_used;
    memcpy(dst, src, n);
    memset(dst + n, 0, padded - n);
    r->iov[r->n_iov++] = (struct iovec){dst, padded};
    r->bounce_used += padded;
  }
  r->n_pages += padded / PD_BLOCKFILE_PAGE;
  return PD_OK;
}

int pd_blockfile_write(pd_blockfile *f, const pd_blockfile_extent *extents, size_t n) {
  write_run *r = malloc(sizeof *r);
  if (!r) return PD_ENOMEM;
  r->n_iov = 0;
  r->n_pages = 0;
  r->bounce_used = 0;
  r->first_page = 0;
  int rc = PD_OK;
  uint64_t file_pages;
  pd_blockfile_usage(f, NULL, &file_pages);
  for (size_t i = 0; i < n && rc == PD_OK; i++) {
    const pd_blockfile_extent *e = &extents[i];
    uint64_t pages = pd_blockfile_pages(e->n_bytes);
    if (e->page > file_pages || pages > file_pages - e->page) {
      rc = PD_EINVAL;
      break;
    }
    if (pages == 0) continue;
    if (r->n_iov && e->page != r->first_page + r->n_pages) rc = flush_run(f, r);
    if (r->n_iov == 0) r->first_page = e->page;
    /* pieces no larger than the bounce buffer */
    const uint8_t *src = e->src;
    for (size_t done = 0; done < e->n_bytes && rc == PD_OK; done += BOUNCE_BYTES) {
      size_t piece = e->n_bytes - done < BOUNCE_BYTES ? e->n_bytes - done : BOUNCE_BYTES;
      rc = add_piece(f, r, src + done, piece);
    }
  }
  if (rc == PD_OK && r->n_iov) rc = flush_run(f, r);
  free(r);
  return rc;
}

static int pread_all(int fd, void *dst, size_t n, off_t off) {
  struct iovec one = {dst, n};
  return vector_io(fd, 0, &one, 1, off);
}

int pd_blockfile_read(pd_blockfile *f, uint64_t page, void *dst, size_t n_bytes) {
  off_t off = (off_t)(page * PD_BLOCKFILE_PAGE);
  if (!f->direct || (uintptr_t)dst % PD_BLOCKFILE_PAGE != 0)
    return pread_all(f->fd_cached, dst, n_bytes, off);
  size_t whole = n_bytes / PD_BLOCKFILE_PAGE * PD_BLOCKFILE_PAGE;
  int rc = whole ? pread_all(f->fd, dst, whole, off) : PD_OK;
  if (rc == PD_OK && whole < n_bytes) { /* the last, partial page through an aligned buffer */
    _Alignas(PD_BLOCKFILE_PAGE) uint8_t tail[PD_BLOCKFILE_PAGE];
    rc = pread_all(f->fd, tail, PD_BLOCKFILE_PAGE, off + (off_t)whole);
    if (rc == PD_OK) memcpy((uint8_t *)dst + whole, tail, n_bytes - whole);
  }
  return rc;
}

/* One run of adjacent pages being gathered into a preadv, and the copies out of the bounce
 * buffer to do once it has landed. */
typedef struct read_run {
  struct iovec iov[MAX_IOV];
  int n_iov;
  uint64_t first_page, n_pages;
  size_t bounce_used;
  size_t members[MAX_IOV]; /* request indices */
  int n_members;
  struct {
    uint8_t *dst;
    size_t bounce_off, len;
  } copies[MAX_IOV];
  int n_copies;
} read_run;

static void flush_read_run(pd_blockfile *f, read_run *r, pd_blockfile_read_req *reqs) {
  if (r->n_members == 0) return;
  int rc = vector_io(f->fd, 0, r->iov, r->n_iov, (off_t)(r->first_page * PD_BLOCKFILE_PAGE));
  if (rc == PD_OK) {
    for (int i = 0; i < r->n_copies; i++)
      memcpy(r->copies[i].dst, f->read_bounce + r->copies[i].bounce_off, r->copies[i].len);
    for (int i = 0; i < r->n_members; i++) reqs[r->members[i]].rc = PD_OK;
  } else { /* find out which of them failed */
    for (int i = 0; i < r->n_members; i++) {
      pd_blockfile_read_req *q = &reqs[r->members[i]];
      q->rc = pd_blockfile_read(f, q->page, q->dst, q->n_bytes);
    }
  }
  r->n_iov = r->n_members = r->n_copies = 0;
  r->n_pages = 0;
  r->bounce_used = 0;
}

typedef struct page_index {
  uint64_t page;
  size_t index;
} page_index;

static int by_page(const void *a, const void *b) {
  uint64_t pa = ((const page_index *)a)->page, pb = ((const page_index *)b)->page;
  return pa < pb ? -1 : pa > pb;
}

int pd_blockfile_read_many(pd_blockfile *f, pd_blockfile_read_req *reqs, size_t n) {
  page_index *order = malloc(n * sizeof *order + 1);
  read_run *r = malloc(sizeof *r);
  if (!order || !r) {
    free(order);
    free(r);
    return PD_ENOMEM;
  }
  pthread_mutex_lock(&f->read_mu);
  if (!f->read_bounce && posix_memalign((void **)&f->read_bounce, PD_BLOCKFILE_PAGE, BOUNCE_BYTES))
    f->read_bounce = NULL;
  if (!f->read_bounce) {
    pthread_mutex_unlock(&f->read_mu);
    free(order);
    free(r);
    return PD_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) order[i] = (page_index){reqs[i].page, i};
  qsort(order, n, sizeof *order, by_page);
  r->n_iov = r->n_members = r->n_copies = 0;
  r->n_pages = 0;
  r->bounce_used = 0;
  for (size_t k = 0; k < n; k++) {
    pd_blockfile_read_req *q = &reqs[order[k].index];
    uint64_t pages = pd_blockfile_pages(q->n_bytes);
    size_t padded = (size_t)pages * PD_BLOCKFILE_PAGE;
    if (pages == 0) {
      q->rc = PD_OK;
      continue;
    }
    if (padded > BOUNCE_BYTES) { /* larger than a run may be: on its own */
      q->rc = pd_blockfile_read(f, q->page, q->dst, q->n_bytes);
      continue;
    }
    /* the pages straight into dst, or all of it through the bounce buffer; a partial last page
     * always through the bounce buffer */
    int direct_dst = !f->direct || (uintptr_t)q->dst % PD_BLOCKFILE_PAGE == 0;
    size_t whole = direct_dst ? q->n_bytes / PD_BLOCKFILE_PAGE * PD_BLOCKFILE_PAGE : 0;
    size_t via_bounce = padded - whole;
    if (r->n_members && (q->page != r->first_page + r->n_pages || r->n_iov + 2 > MAX_IOV ||
                         r->bounce_used + via_bounce > BOUNCE_BYTES))
      flush_read_run(f, r, reqs);
    if (r->n_members == 0) r->first_page = q->page;
    uint8_t *dst = q->dst;
    if (whole) r->iov[r->n_iov++] = (struct iovec){dst, whole};
    if (via_bounce) {
      r->iov[r->n_iov++] = (struct iovec){f->read_bounce + r->bounce_used, via_bounce};
      r->copies[r->n_copies].dst = dst + whole;
      r->copies[r->n_copies].bounce_off = r->bounce_used;
      r->copies[r->n_copies].len = q->n_bytes - whole;
      r->n_copies++;
      r->bounce_used += via_bounce;
    }
    r->members[r->n_members++] = order[k].index;
    r->n_pages += pages;
  }
  flush_read_run(f, r, reqs);
  pthread_mutex_unlock(&f->read_mu);
  free(order);
  free(r);
  return PD_OK;
}

int pd_blockfile_sync(pd_blockfile *f) {
  while (fdatasync(f->fd) != 0)
    if (errno != EINTR) return pd_err_from_errno(errno);
  return PD_OK;
}
