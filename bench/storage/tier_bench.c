/*
 * tier_bench.c -- how fast the tier manager moves KV blocks, beside the disk's own sequential
 * rate measured in the same run.
 *
 *   tier_bench [--dir DIR] [--blocks N] [--block-bytes B] [--sync fast|durable|nosync]
 *              [--out FILE.md]
 *
 * Blocks of SmolLM2-135M's f16 size (368,640 bytes) by default. Phases, each timed from the
 * first request to the last completion (pd_tiers_sync):
 *   1. spill device -> host (memcpy batches on the storage worker)
 *   2. spill host -> disk (payloads to blocks.dat with O_DIRECT, then the LMDB index entries;
 *      one store batch per step's batch)
 *   3. restore disk -> device, with the page cache dropped first (a cold read from the device)
 *   4. restore host -> device (after re-spilling half to host)
 * The floor: sequential O_DIRECT writes and reads of the same byte count in 64 MiB chunks, as
 * `dd oflag=direct` / `dd iflag=direct` would do, in DIR.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "pd_err.h"
#include "pd_radix.h"
#include "pd_tiers.h"

#define BT 16

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int drop_page_cache(void) {
  sync();
  FILE *f = fopen("/proc/sys/vm/drop_caches", "w");
  if (!f) return -1;
  int ok = fputs("3\n", f) >= 0;
  return fclose(f) == 0 && ok ? 0 : -1;
}

/* Sequential O_DIRECT write then read of bytes in 64 MiB chunks: the disk's floor. */
static int direct_io(const char *dir, uint64_t bytes, double *write_bps, double *read_bps) {
  char path[4096];
  snprintf(path, sizeof path, "%s/direct_io.tmp", dir);
  size_t chunk = 64u << 20;
  void *buf;
  if (posix_memalign(&buf, 4096, chunk)) return -1;
  memset(buf, 0x5a, chunk);
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_DIRECT, 0600);
  if (fd < 0) {
    free(buf);
    return -1;
  }
  double t0 = now_s();
  for (uint64_t done = 0; done < bytes; done += chunk)
    if (write(fd, buf, chunk) != (ssize_t)chunk) {
      close(fd);
      free(buf);
      return -1;
    }
  fdatasync(fd);
  *write_bps = (double)((bytes + chunk - 1) / chunk * chunk) / (now_s() - t0);
  close(fd);
  drop_page_cache();
  fd = open(path, O_RDONLY | O_DIRECT);
  t0 = now_s();
  uint64_t got = 0;
  ssize_t n;
  while ((n = read(fd, buf, chunk)) > 0) got += (uint64_t)n;
  *read_bps = (double)got / (now_s() - t0);
  close(fd);
  unlink(path);
  free(buf);
  return 0;
}

int main(int argc, char **argv) {
  const char *dir = "/tmp/prefixd_tier_bench", *out = NULL, *sync_mode = "fast";
  uint32_t n_blocks = 2048;
  size_t block_bytes = 368640;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      dir = argv[++i];
    else if (!strcmp(argv[i], "--blocks") && i + 1 < argc)
      n_blocks = (uint32_t)atoi(argv[++i]);
    else if (!strcmp(argv[i], "--block-bytes") && i + 1 < argc)
      block_bytes = (size_t)atol(argv[++i]);
    else if (!strcmp(argv[i], "--sync") && i + 1 < argc)
      sync_mode = argv[++i];
    else if (!strcmp(argv[i], "--out") && i + 1 < argc)
      out = argv[++i];
    else {
      fprintf(stderr, "usage: tier_bench [--dir DIR] [--blocks N] [--block-bytes B] "
                      "[--sync fast|durable|nosync] [--out FILE.md]\n");
      return 2;
    }
  }
  if (n_blocks < 64 || block_bytes < 4096) {
    fprintf(stderr, "tier_bench: at least 64 blocks of 4 KiB\n");
    return 2;
  }
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", dir, dir);
  if (system(cmd)) return 1;
  char kvdir[4200];
  snprintf(kvdir, sizeof kvdir, "%s/kv", dir);
  if (mkdir(kvdir, 0700)) return 1;

  pd_devpool pool; /* a CPU pool: the memcpy figures; the GPU's are in bench/cuda */
  char perr[160];
  if (pd_devpool_create(&pool, PD_DEVPOOL_CPU, n_blocks, block_bytes, perr, sizeof perr)) {
    fprintf(stderr, "tier_bench: %s\n", perr);
    return 1;
  }
  uint8_t *device = pool.base; /* (n_blocks, block_bytes) */
  for (size_t i = 0; i < (size_t)n_blocks * block_bytes; i++)
    device[i] = (uint8_t)(i * 2654435761u >> 13);
  pd_tiers_config tc = {.block_bytes = block_bytes,
                        .block_tokens = BT,
                        .dtype = 1,
                        .device = &pool,
                        .host_bytes = (uint64_t)n_blocks * block_bytes,
                        .disk_dir = kvdir,
                        .disk_bytes = (uint64_t)n_blocks * (block_bytes + 8192) * 3 / 2,
                        .durability = !strcmp(sync_mode, "durable")  ? PD_KVSTORE_DURABLE
                                      : !strcmp(sync_mode, "nosync") ? PD_KVSTORE_NOSYNC
                                                                     : PD_KVSTORE_FAST,
                        .write_filter = PD_WRITE_ALWAYS};
  memset(tc.fingerprint, 7, 16);
  pd_radix tree;
  pd_radix_config rc = {.block_tokens = BT};
  memcpy(rc.fingerprint, tc.fingerprint, 16);
  pd_tiers_capacity(&tc, rc.tier_capacity);
  rc.tier_capacity[0] = n_blocks;
  if (pd_radix_init(&tree, &rc)) return 1;
  uint8_t salt[16] = {9};
  uint32_t tenant;
  pd_tenants_add(&tree.tenants, "bench", salt, &tenant);
  uint32_t ns = pd_tenants_get(&tree.tenants, tenant)->private_ns;
  pd_tiers *tiers;
  char err[256];
  /* every spill is written (nothing is written through: only spills are measured) */
  if (pd_tiers_open(&tc, &tree, &tiers, err, sizeof err)) {
    fprintf(stderr, "tier_bench: %s\n", err);
    return 1;
  }
  /* 64 prompts filling the device tier */
  uint32_t per = n_blocks / 64, n_prompts = 64;
  int32_t *tok = malloc((size_t)per * BT * sizeof *tok);
  uint32_t *slots = malloc(per * sizeof *slots);
  pd_insert_result *res = malloc(per * sizeof *res);
  for (uint32_t p = 0; p < n_prompts; p++) {
    for (uint32_t i = 0; i < per * BT; i++) tok[i] = (int32_t)(p * 100000 + i);
    for (uint32_t b = 0; b < per; b++) pd_radix_alloc_slot(&tree, 0, &slots[b]);
    uint32_t done = 0;
    pd_radix_insert(&tree, tenant, ns, tok, per * BT, slots, 0, 1, res, &done);
    for (uint32_t b = done; b-- > 0;) pd_radix_release(&tree, &res[b].node, 1);
  }
  uint32_t total = per * n_prompts;
  uint64_t bytes = (uint64_t)total * block_bytes;
  /* warm-up: the host tier's pages are touched once, as in a daemon that has been running */
  memset(pd_tiers_host_block(tiers, 0), 0, (size_t)total * block_bytes);

  double t0 = now_s();
  pd_tiers_make_room(tiers, 0, total, 2);
  pd_tiers_sync(tiers);
  double spill_host = now_s() - t0;
  uint32_t in_host = pd_radix_tier_used(&tree, 1);

  t0 = now_s();
  pd_tiers_make_room(tiers, 1, total, 3);
  pd_tiers_sync(tiers);
  double spill_disk = now_s() - t0;
  uint32_t on_disk = pd_radix_tier_used(&tree, 2);

  int dropped = drop_page_cache() == 0;
  uint32_t restored = 0;
  uint32_t *nodes = malloc((per + 1) * sizeof *nodes);
  t0 = now_s();
  for (uint32_t p = 0; p < n_prompts; p++) { /* as the engine does: one prompt at a time */
    for (uint32_t i = 0; i < per * BT; i++) tok[i] = (int32_t)(p * 100000 + i);
    pd_match m;
    pd_radix_match(&tree, tenant, ns, tok, per * BT, 4, nodes, per + 1, &m);
    for (uint32_t b = 0; b < m.n_nodes; b++) {
      uint32_t slot;
      if (pd_radix_node(&tree, nodes[b])->tier == 2 &&
          pd_tiers_restore(tiers, nodes[b], 4, &slot) == PD_OK)
        restored++;
    }
    pd_tiers_flush(tiers);
    pd_radix_release(&tree, nodes, m.n_nodes);
  }
  pd_tiers_sync(tiers);
  double restore_disk = now_s() - t0;

  /* host -> device: spill everything to host again, then restore it */
  pd_tiers_make_room(tiers, 0, total, 5);
  pd_tiers_sync(tiers);
  uint32_t restored_host = 0;
  t0 = now_s();
  for (uint32_t p = 0; p < n_prompts; p++) {
    for (uint32_t i = 0; i < per * BT; i++) tok[i] = (int32_t)(p * 100000 + i);
    pd_match m;
    pd_radix_match(&tree, tenant, ns, tok, per * BT, 6, nodes, per + 1, &m);
    for (uint32_t b = 0; b < m.n_nodes; b++) {
      uint32_t slot;
      if (pd_radix_node(&tree, nodes[b])->tier == 1 &&
          pd_tiers_restore(tiers, nodes[b], 6, &slot) == PD_OK)
        restored_host++;
    }
    pd_tiers_flush(tiers);
    pd_radix_release(&tree, nodes, m.n_nodes);
  }
  pd_tiers_sync(tiers);
  double restore_host = now_s() - t0;
  pd_tiers_counters c;
  pd_tiers_get_counters(tiers, &c);
  pd_kvstore_counters kc = {0};
  pd_tiers_disk_stats(tiers, &kc, NULL, NULL, NULL);
  pd_tiers_close(tiers);
  pd_radix_free(&tree);

  double dw = 0, dr = 0;
  int have_direct = direct_io(dir, bytes, &dw, &dr) == 0;
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd)) fprintf(stderr, "tier_bench: could not remove %s\n", dir);

  struct utsname u;
  uname(&u);
  time_t now = time(NULL);
  char when[64];
  strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", gmtime(&now));
  FILE *f = out ? fopen(out, "w") : stdout;
  if (!f) return 1;
  double gb = 1e9;
  fprintf(f, "# storage tiers: spill and restore throughput beside the disk's own rate\n\n");
  fprintf(f,
          "Command: `build/bench/storage/tier_bench --dir %s --blocks %u --block-bytes %zu "
          "--sync %s%s%s`\n\n",
          dir, n_blocks, block_bytes, sync_mode, out ? " --out " : "", out ? out : "");
  fprintf(f, "Machine: %s %s, %ld cores; %s. %u blocks of %zu bytes (%.2f GB) per phase.\n\n",
          u.sysname, u.release, sysconf(_SC_NPROCESSORS_ONLN), when, total, block_bytes,
          (double)bytes / gb);
  fprintf(f, "| phase | blocks | time | rate | floor (same run) | of floor | target |\n");
  fprintf(f, "| --- | --- | --- | --- | --- | --- | --- |\n");
  fprintf(f, "| spill device -> host (memcpy batches) | %u | %.3f s | %.2f GB/s | | | |\n", in_host,
          spill_host, (double)in_host * block_bytes / spill_host / gb);
  double sd = (double)on_disk * block_bytes / spill_disk;
  fprintf(f, "| spill host -> disk (blocks.dat + index, sync %s) | %u | %.3f s | %.2f GB/s | ",
          sync_mode, on_disk, spill_disk, sd / gb);
  if (have_direct)
    fprintf(f, "%.2f GB/s O_DIRECT write | %.0f%% | >= 70%% |\n", dw / gb, 100 * sd / dw);
  else
    fprintf(f, "n/a | | >= 70%% |\n");
  double rd = (double)restored * block_bytes / restore_disk;
  fprintf(f, "| restore disk -> device (%s) | %u | %.3f s | %.2f GB/s | ",
          dropped ? "page cache dropped" : "page cache NOT dropped", restored, restore_disk,
          rd / gb);
  if (have_direct)
    fprintf(f, "%.2f GB/s O_DIRECT read | %.0f%% | >= 70%% |\n", dr / gb, 100 * rd / dr);
  else
    fprintf(f, "n/a | | >= 70%% |\n");
  fprintf(f, "| restore host -> device (memcpy batches) | %u | %.3f s | %.2f GB/s | | | |\n\n",
          restored_host, restore_host, (double)restored_host * block_bytes / restore_host / gb);
  fprintf(f,
          "Batches handed to the storage worker: %llu. Measured rates the restore-or-recompute "
          "choice uses: host %.2f GB/s, disk %.2f GB/s. Time the storage worker spent in the disk "
          "store: writes %.3f s, reads %.3f s. blocks.dat written with O_DIRECT: %s.\n",
          (unsigned long long)c.batches, c.rate_bps[1] / gb, c.rate_bps[2] / gb,
          c.disk_write_seconds, c.disk_read_seconds, kc.direct_io ? "yes" : "no");
  if (out) fclose(f);
  pd_devpool_destroy(&pool);
  free(tok);
  free(slots);
  free(res);
  free(nodes);
  return 0;
}
