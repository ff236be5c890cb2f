/*
 * pd_cpu_share.h -- how many threads the CPU forward pass should run, from the CPUs this process
 * may use and what the machine's other work leaves of them.
 *
 * The forward pass runs OpenMP regions with a barrier every few dozen microseconds (~150 a
 * token). With as many threads as CPUs and another busy process on the machine, the kernel
 * deschedules one of the threads for a time slice at a time, and every barrier waits for it:
 * decode at batch 1 ran 2-2.6x slower with 2 threads than with 1 on a 2-CPU machine beside one
 * busy loop, and prefill 1.3x slower (bench/results/cpu_shared_cores.md). So, unless the
 * operator fixes the count (--threads N), the engine asks this sampler before each step:
 *   - allowed: the CPUs of the process's affinity mask, capped by a cgroup CPU quota (cgroup v2
 *     cpu.max or v1 cpu.cfs_quota_us / cpu.cfs_period_us, the smallest along the process's
 *     cgroup path), rounded up;
 *   - others: the CPUs of the affinity mask busy with anything but this process over the last
 *     second (/proc/stat's per-CPU busy time, steal included, minus /proc/self/stat's);
 *   - threads = the free CPUs of the mask (its size - others) plus a 0.3 margin, rounded down,
 *     within [1, allowed]; a new count is taken when two samples in a row agree.
 * One sampler per engine, used by the engine thread only.
 */
#ifndef PD_CPU_SHARE_H
#define PD_CPU_SHARE_H

#include <sched.h>
#include <stdint.h>

typedef struct pd_cpu_share {
  int allowed;    /* CPUs this process may use (affinity, cgroup quota), >= 1 */
  int online;     /* CPUs of the affinity mask (all online ones if it cannot be read) */
  cpu_set_t mask; /* the affinity mask: whose /proc/stat lines are summed */
  int have_mask;
  int threads;          /* the current choice, 1 .. allowed */
  int pending, agreed;  /* a different choice, and how many samples in a row gave it */
  int64_t last_ms;      /* when the counters were read; -1: not yet */
  uint64_t busy, total; /* /proc/stat: busy and all jiffies, summed over the mask's CPUs */
  uint64_t self;        /* this process's user + system jiffies */
  double others;        /* CPUs busy with other work over the last sample, for the metrics */
} pd_cpu_share;

/* Starts with threads = allowed. Returns 0. */
int pd_cpu_share_init(pd_cpu_share *s);

/* The thread count for now: re-reads the counters at most once a second (now_ms: a monotonic
 * clock); returns s->threads. Where /proc cannot be read, the count stays at allowed. */
int pd_cpu_share_update(pd_cpu_share *s, int64_t now_ms);

/* The choice for `allowed` CPUs of `online` (the mask's) when `others` of them are busy with
 * other work. */
int pd_cpu_share_choose(int allowed, int online, double others);

/* CPUs a cgroup v2 cpu.max text allows ("max 100000": 0, no limit; "150000 100000": 2, rounded
 * up), or -1 if the text is not one. */
int pd_cpu_quota_v2(const char *text);

/* The CPUs this process may use: its affinity mask, capped by the cgroup quotas on its path. */
int pd_cpu_allowed(void);

#endif /* PD_CPU_SHARE_H */
