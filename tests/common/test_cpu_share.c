/* test_cpu_share.c -- pd_cpu_share, the thread count of --threads auto: the choice from the free
 * CPUs; cgroup v2 cpu.max texts; on this machine's real /proc, the count drops below the allowed
 * CPUs while a busy process runs beside it (2 CPUs or more); and, where this process may create a
 * cgroup (root, cgroup v1 or v2 with the cpu controller), a process in a cgroup with a one-CPU
 * quota is allowed one CPU. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pd_check.h"
#include "pd_cpu_share.h"

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

START_TEST(choice_follows_the_free_cpus) {
  ck_assert_int_eq(pd_cpu_share_choose(2, 2, 0.0), 2);
  ck_assert_int_eq(pd_cpu_share_choose(2, 2, 0.2), 2); /* a little noise keeps both */
  ck_assert_int_eq(pd_cpu_share_choose(2, 2, 0.5), 1); /* half a CPU taken: one */
  ck_assert_int_eq(pd_cpu_share_choose(2, 2, 1.0), 1);
  ck_assert_int_eq(pd_cpu_share_choose(2, 2, 5.0), 1);   /* never below one */
  ck_assert_int_eq(pd_cpu_share_choose(4, 64, 30.0), 4); /* a quota of 4 on a big busy host */
  ck_assert_int_eq(pd_cpu_share_choose(16, 16, 1.0), 15);
  ck_assert_int_eq(pd_cpu_share_choose(16, 16, -1.0), 16);
  ck_assert_int_eq(pd_cpu_share_choose(0, 8, 0.0), 1);
}
END_TEST

START_TEST(cgroup_v2_cpu_max) {
  ck_assert_int_eq(pd_cpu_quota_v2("max 100000\n"), 0);
  ck_assert_int_eq(pd_cpu_quota_v2("100000 100000\n"), 1);
  ck_assert_int_eq(pd_cpu_quota_v2("150000 100000"), 2); /* 1.5 CPUs: rounded up */
  ck_assert_int_eq(pd_cpu_quota_v2("50000 100000"), 1);
  ck_assert_int_eq(pd_cpu_quota_v2("400000 100000"), 4);
  ck_assert_int_eq(pd_cpu_quota_v2(""), -1);
  ck_assert_int_eq(pd_cpu_quota_v2("max"), -1);
  ck_assert_int_eq(pd_cpu_quota_v2("12x 100000"), -1);
  ck_assert_int_eq(pd_cpu_quota_v2("100000 0"), -1);
}
END_TEST

START_TEST(a_busy_neighbour_takes_a_thread) {
  pd_cpu_share s;
  ck_assert_int_eq(pd_cpu_share_init(&s), 0);
  ck_assert_int_ge(s.allowed, 1);
  ck_assert_int_eq(s.threads, s.allowed);
  ck_assert_int_eq(pd_cpu_share_update(&s, now_ms()), s.allowed); /* the first read */
  /* one CPU: nothing to drop; a quota under the mask's CPUs leaves room for the neighbour */
  if (s.allowed < 2 || s.allowed < s.online) return;
  pid_t hog = fork();
  ck_assert_int_ge(hog, 0);
  if (hog == 0)
    for (volatile unsigned long i = 0;; i++) {
    }
  int threads = s.threads;
  for (int64_t end = now_ms() + 8000; now_ms() < end && threads >= s.allowed;) {
    for (volatile int i = 0; i < 2000000; i++) { /* this process computes too, as the engine */
    }
    threads = pd_cpu_share_update(&s, now_ms());
  }
  kill(hog, SIGKILL);
  waitpid(hog, NULL, 0);
  ck_assert_msg(threads < s.allowed, "threads %d of %d with a busy process beside (others %.2f)",
                threads, s.allowed, s.others);
  ck_assert_int_ge(threads, 1);
  ck_assert(s.others >= 0.5);
}
END_TEST

/* Writes text to path; 0 or -1. */
static int write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  int ok = fputs(text, f) >= 0;
  return fclose(f) == 0 && ok ? 0 : -1;
}

/* A cgroup with a one-CPU quota (v1's cpu controller, or v2 with cpu enabled): its directory in
 * dir, or -1 where this process cannot make one. */
static int make_quota_cgroup(char *dir, size_t n) {
  snprintf(dir, n, "/sys/fs/cgroup/cpu/prefixd-test-%d", (int)getpid());
  if (mkdir(dir, 0755) == 0) {
    char path[512];
    snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
    if (write_file(path, "100000") == 0) {
      snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
      if (write_file(path, "100000") == 0) return 0;
    }
    rmdir(dir);
    return -1;
  }
  snprintf(dir, n, "/sys/fs/cgroup/prefixd-test-%d", (int)getpid());
  if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) || mkdir(dir, 0755)) return -1;
  char path[512];
  snprintf(path, sizeof path, "%s/cpu.max", dir);
  if (write_file(path, "100000 100000") == 0) return 0;
  rmdir(dir);
  return -1;
}

START_TEST(a_cgroup_quota_caps_the_allowed_cpus) {
  char dir[256];
  if (make_quota_cgroup(dir, sizeof dir)) {
    fprintf(stderr, "test_cpu_share: no cgroup could be made here (%s): quota check skipped\n",
            strerror(errno));
    return;
  }
  pid_t child = fork();
  ck_assert_int_ge(child, 0);
  if (child == 0) { /* joins the cgroup, then reports what it may use */
    char path[512], pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    if (write_file(path, pid)) _exit(100);
    _exit(pd_cpu_allowed());
  }
  int status = 0;
  waitpid(child, &status, 0);
  rmdir(dir);
  ck_assert(WIFEXITED(status));
  ck_assert_msg(WEXITSTATUS(status) != 100, "the child could not join %s", dir);
  ck_assert_int_eq(WEXITSTATUS(status), 1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("cpu_share");
  TCase *t = tcase_create("cpu_share");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, choice_follows_the_free_cpus);
  tcase_add_test(t, cgroup_v2_cpu_max);
  tcase_add_test(t, a_busy_neighbour_takes_a_thread);
  tcase_add_test(t, a_cgroup_quota_caps_the_allowed_cpus);
  suite_add_tcase(s, t);
  return pd_check_run(s, 1);
}
