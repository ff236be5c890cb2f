/*
 * pd_fault.h -- fault injection for tests, in the style of SQLite's OOM and I/O-error loops.
 *
 * Code that can fail in ways a test cannot provoke for real (allocation failure, a full disk,
 * an I/O error, LMDB's map filling up) asks pd_fault_hit(site) at the point of failure. A test
 * arms one site to fail on its N-th hit (and optionally every hit after it), runs the operation,
 * and checks the clean error; then loops over N = 1, 2, ... until the operation succeeds with no
 * fault left to hit. Disarmed (the default), a check is one relaxed atomic load.
 */
#ifndef PD_FAULT_H
#define PD_FAULT_H

enum pd_fault_site {
  PD_FAULT_ALLOC = 0, /* an allocation returns NULL */
  PD_FAULT_DISK_FULL, /* a write fails with ENOSPC */
  PD_FAULT_DISK_IO,   /* a write or read fails with EIO */
  PD_FAULT_MAP_FULL,  /* an LMDB commit fails with MDB_MAP_FULL */
  PD_FAULT_N_SITES
};

/* Arms site to fail on its nth hit from now (nth >= 1); if persistent, every hit after it fails
 * too. nth = 0 disarms. Not thread-safe against concurrent arming; hits may come from any thread. */
void pd_fault_arm(enum pd_fault_site site, long nth, int persistent);
void pd_fault_disarm_all(void);

/* Returns 1 if this hit of site must fail. */
int pd_fault_hit(enum pd_fault_site site);

/* How many times site failed since it was last armed. */
long pd_fault_fired(enum pd_fault_site site);

#endif /* PD_FAULT_H */
