/*
 * pd_cpu_share.c -- see pd_cpu_share.h.
 */
#include "pd_cpu_share.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SAMPLE_MS 1000
#define MARGIN    0.3 /* a CPU 70% taken by others is left to them */

int pd_cpu_share_choose(int allowed, int online, double others) {
  if (allowed < 1) allowed = 1;
  const double free_cpus = (double)online - (others > 0 ? others : 0);
  int n = (int)(free_cpus + MARGIN);
  return n < 1 ? 1 : n > allowed ? allowed : n;
}

int pd_cpu_quota_v2(const char *text) {
  char quota[32];
  long long period;
  if (sscanf(text, "%31s %lld", quota, &period) != 2 || period <= 0) return -1;
  if (!strcmp(quota, "max")) return 0;
  char *end;
  long long q = strtoll(quota, &end, 10);
  if (*end || q <= 0) return -1;
  return (int)((q + period - 1) / period);
}

/* The first line of path into buf; 0 or -1. */
static int read_line(const char *path, char *buf, size_t n) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  int ok = fgets(buf, (int)n, f) != NULL;
  fclose(f);
  return ok ? 0 : -1;
}

/* The CPUs a cgroup directory's quota allows: 0 for none (or none readable). */
static int dir_quota(const char *dir, int v2) {
  char path[PATH_MAX + 32], line[128];
  if (v2) {
    snprintf(path, sizeof path, "%s/cpu.max", dir);
    if (read_line(path, line, sizeof line)) return 0;
    int q = pd_cpu_quota_v2(line);
    return q > 0 ? q : 0;
  }
  long long quota, period;
  snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
  if (read_line(path, line, sizeof line) || sscanf(line, "%lld", &quota) != 1 || quota <= 0)
    return 0;
  snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
  if (read_line(path, line, sizeof line) || sscanf(line, "%lld", &period) != 1 || period <= 0)
    return 0;
  return (int)((quota + period - 1) / period);
}

/* The smallest quota from root + path up to root itself; 0 for none. */
static int path_quota(const char *root, const char *path, int v2) {
  char dir[PATH_MAX];
  if (snprintf(dir, sizeof dir, "%s%s", root, path) >= (int)sizeof dir) return 0;
  const size_t root_len = strlen(root);
  int best = 0;
  for (;;) {
    size_t len = strlen(dir);
    while (len > root_len && dir[len - 1] == '/') dir[--len] = 0;
    const int q = dir_quota(dir, v2);
    if (q > 0 && (best == 0 || q < best)) best = q;
    char *slash = strrchr(dir, '/');
    if (len <= root_len || !slash || (size_t)(slash - dir) < root_len) break;
    *slash = 0;
  }
  return best;
}

/* The quota of the process's cgroup (v2, or v1's cpu controller); 0 for none. */
static int cgroup_quota(void) {
  FILE *f = fopen("/proc/self/cgroup", "r");
  if (!f) return 0;
  char line[PATH_MAX + 64];
  int best = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2) continue;
    *c2 = 0;
    const char *controllers = c1 + 1, *path = c2 + 1;
    int q = 0;
    if (!*controllers) { /* v2: "0::/path" */
      q = path_quota("/sys/fs/cgroup", path, 1);
    } else { /* v1: the line whose controllers include cpu */
      char list[256];
      snprintf(list, sizeof list, ",%s,", controllers);
      if (!strstr(list, ",cpu,")) continue;
      char root[PATH_MAX];
      snprintf(root, sizeof root, "/sys/fs/cgroup/%s", controllers);
      if (access(root, F_OK)) snprintf(root, sizeof root, "/sys/fs/cgroup/cpu");
      q = path_quota(root, path, 0);
    }
    if (q > 0 && (best == 0 || q < best)) best = q;
  }
  fclose(f);
  return best;
}

/* The CPUs of the affinity mask (into *mask, with *have_mask), or the online ones without it. */
static int mask_cpus(cpu_set_t *mask, int *have_mask) {
  *have_mask = sched_getaffinity(0, sizeof *mask, mask) == 0 && CPU_COUNT(mask) > 0;
  const int n = *have_mask ? CPU_COUNT(mask) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n;
}

/* n CPUs, capped by the cgroup quota. */
static int quota_capped(int n) {
  const int q = cgroup_quota();
  return q > 0 && q < n ? q : n;
}

int pd_cpu_allowed(void) {
  cpu_set_t mask;
  int have_mask;
  return quota_capped(mask_cpus(&mask, &have_mask));
}

/* /proc/stat: busy (user, nice, system, irq, softirq, steal) and all jiffies, summed over the
 * CPUs of the mask (the "cpuN" lines), or of the whole machine (the "cpu" line) without one. */
static int read_machine(const pd_cpu_share *s, uint64_t *busy, uint64_t *total) {
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return -1;
  char line[512];
  int found = 0;
  *busy = *total = 0;
  while (fgets(line, sizeof line, f) && !strncmp(line, "cpu", 3)) {
    int cpu = -1, off = 0;
    if (line[3] == ' ') {
      if (s->have_mask) continue;
      off = 3;
    } else if (sscanf(line, "cpu%d%n", &cpu, &off) != 1 || !s->have_mask || cpu < 0 ||
               cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &s->mask)) {
      continue;
    }
    unsigned long long v[8] = {0};
    if (sscanf(line + off, "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
               &v[4], &v[5], &v[6], &v[7]) < 4)
      continue;
    const uint64_t b = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    *busy += b, *total += b + v[3] + v[4], found++;
  }
  fclose(f);
  return found ? 0 : -1;
}

/* This process's user + system jiffies (/proc/self/stat fields 14 and 15). */
static int read_self(uint64_t *ticks) {
  char buf[1024];
  if (read_line("/proc/self/stat", buf, sizeof buf)) return -1;
  const char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
  unsigned long long utime, stime;
  if (!p ||
      sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
    return -1;
  *ticks = utime + stime;
  return 0;
}

int pd_cpu_share_init(pd_cpu_share *s) {
  memset(s, 0, sizeof *s);
  s->online = mask_cpus(&s->mask, &s->have_mask);
  s->allowed = quota_capped(s->online);
  s->threads = s->allowed;
  s->last_ms = -1;
  return 0;
}

int pd_cpu_share_update(pd_cpu_share *s, int64_t now_ms) {
  if (s->last_ms >= 0 && now_ms - s->last_ms < SAMPLE_MS) return s->threads;
  uint64_t busy, total, self;
  if (read_machine(s, &busy, &total) || read_self(&self)) return s->threads;
  if (s->last_ms >= 0 && total > s->total && busy >= s->busy && self >= s->self) {
    const double per_cpu = (double)(total - s->total) / s->online; /* jiffies a CPU had */
    const double busy_cpus = (double)(busy - s->busy) / per_cpu;
    const double own = (double)(self - s->self) / per_cpu;
    s->others = busy_cpus > own ? busy_cpus - own : 0;
    const int want = pd_cpu_share_choose(s->allowed, s->online, s->others);
    if (want == s->threads) {
      s->agreed = 0;
    } else {
      s->agreed = want == s->pending ? s->agreed + 1 : 1;
      s->pending = want;
      if (s->agreed >= 2) s->threads = want, s->agreed = 0;
    }
  }
  s->busy = busy, s->total = total, s->self = self, s->last_ms = now_ms;
  return s->threads;
}
