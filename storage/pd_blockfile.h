/*
 * pd_blockfile.h -- the disk tier's payload file: KV block payloads in one file, written with
 * O_DIRECT, placed by a free-page bitmap.
 *
 * The disk tier keeps its index (keys, headers, tokens) in LMDB and the payloads here. A payload
 * occupies a run of whole 4 KiB pages ("an extent"); a batch of extents that are adjacent on disk
 * goes out as one pwritev, straight from the caller's buffers when they are page-aligned and a
 * whole number of pages long, through a bounce buffer otherwise. O_DIRECT skips the page cache:
 * a spill costs one DMA of the payload instead of a copy into dirty pages plus the kernel's
 * writeback, which is what held LMDB-only spills to 12-20% of the disk's rate.
 *
 * The file grows by fallocate() in steps of 64 MiB or a sixteenth of the limit the caller gives
 * at each allocation, whichever is smaller, never past that limit; space freed by deletes is reused first (next-fit from where the last
 * allocation ended, so consecutive allocations stay adjacent). The bitmap is not stored: the
 * owner rebuilds it at open from its index with pd_blockfile_claim(), so the file needs no
 * metadata of its own and a crash cannot leave the two disagreeing. Pages written but never
 * indexed (a crash between the write and the index commit) are simply free.
 *
 * Where O_DIRECT is refused (tmpfs and some FUSE filesystems), the file is opened without it and
 * everything else is the same; pd_blockfile_direct() says which.
 *
 * Threads: alloc, release, claim and usage may be called from any thread (a mutex guards the
 * bitmap); pd_blockfile_read and pd_blockfile_read_many from any thread; pd_blockfile_write and
 * pd_blockfile_sync from one thread at a time (the write bounce buffer is the file's).
 */
#ifndef PD_BLOCKFILE_H
#define PD_BLOCKFILE_H

#include <stddef.h>
#include <stdint.h>

#define PD_BLOCKFILE_PAGE 4096u

typedef struct pd_blockfile pd_blockfile;

/* One payload to write: n_bytes from src (borrowed for the call) at page * PD_BLOCKFILE_PAGE.
 * The tail of its last page is written as zeros. */
typedef struct pd_blockfile_extent {
  uint64_t page;
  const void *src;
  size_t n_bytes;
} pd_blockfile_extent;

/* Pages an extent of n_bytes occupies. */
static inline uint64_t pd_blockfile_pages(uint64_t n_bytes) {
  return (n_bytes + PD_BLOCKFILE_PAGE - 1) / PD_BLOCKFILE_PAGE;
}

/* Opens (creating if needed) the file at path, with O_DIRECT when try_direct and the filesystem
 * allows it. The bitmap starts empty: claim what the index holds before allocating. *out is owned
 * by the caller (pd_blockfile_close). On failure writes one line into err. */
int pd_blockfile_open(const char *path, int try_direct, pd_blockfile **out, char *err,
                      size_t errlen);
void pd_blockfile_close(pd_blockfile *f);

/* Whether the file is written and read with O_DIRECT (1) or through the page cache (0). */
int pd_blockfile_direct(const pd_blockfile *f);

/* Marks pages [page, page + n_pages) in use (the index names them). PD_ERANGE if they lie past
 * the end of the file, PD_EEXIST if any is already in use (nothing is marked then). */
int pd_blockfile_claim(pd_blockfile *f, uint64_t page, uint64_t n_pages);

/* Finds n_pages free adjacent pages below limit_pages, growing the file if needed but never
 * past limit_pages pages, and marks them in use; *page receives the first. PD_EFULL when there is no such run,
 * PD_ENOSPC / PD_EIO when growing fails, PD_ENOMEM. */
int pd_blockfile_alloc(pd_blockfile *f, uint64_t n_pages, uint64_t limit_pages, uint64_t *page);

/* Shortens the file to keep_pages, or to one past its last page in use if that is further
 * (the budget was lowered since the file grew). Returns 0 or the ftruncate error. */
int pd_blockfile_trim(pd_blockfile *f, uint64_t keep_pages);

/* Marks pages free again. The caller must know nobody will read them as its own any more. */
void pd_blockfile_release(pd_blockfile *f, uint64_t page, uint64_t n_pages);

/* Writes n extents (allocated to the caller). Adjacent extents share a system call. Returns 0,
 * PD_ENOSPC, PD_EIO, PD_ENOMEM (the bounce buffer), PD_EINVAL (an extent past the file). */
int pd_blockfile_write(pd_blockfile *f, const pd_blockfile_extent *extents, size_t n);

/* Reads n_bytes at page into dst. PD_ECORRUPT if the file ends first, PD_EIO. */
int pd_blockfile_read(pd_blockfile *f, uint64_t page, void *dst, size_t n_bytes);

/* One payload to read: n_bytes at page into dst (borrowed for the call); rc is set. */
typedef struct pd_blockfile_read_req {
  uint64_t page;
  void *dst;
  size_t n_bytes;
  int rc;
} pd_blockfile_read_req;

/* Reads n payloads, in the order of their pages: the requests that are adjacent on disk share
 * one preadv, into the destinations directly when they are page-aligned (O_DIRECT) and through
 * the file's read bounce buffer otherwise. Each request's rc is that of pd_blockfile_read.
 * Returns 0, or PD_ENOMEM (nothing was read). Calls from several threads take turns. */
int pd_blockfile_read_many(pd_blockfile *f, pd_blockfile_read_req *reqs, size_t n);

/* fdatasync: what was written is on the device when this returns 0. */
int pd_blockfile_sync(pd_blockfile *f);

/* Pages in use and pages in the file. */
void pd_blockfile_usage(pd_blockfile *f, uint64_t *used_pages, uint64_t *file_pages);

#endif /* PD_BLOCKFILE_H */
