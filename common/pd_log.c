/* pd_log.c -- logfmt lines, one write(2) each; see pd_log.h. */
#include "pd_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pd_err.h"

static atomic_int log_level = PD_LOG_INFO;
static atomic_int log_fd = 2;
static char log_path[4096];
static pthread_mutex_t reopen_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int pd_log_parse_level(const char *s, enum pd_log_level *out) {
  for (int i = 0; i < 4; i++)
    if (!strcmp(s, level_names[i])) {
      *out = (enum pd_log_level)i;
      return 0;
    }
  return -1;
}

void pd_log_set_level(enum pd_log_level level) {
  atomic_store(&log_level, level);
}
enum pd_log_level pd_log_get_level(void) {
  return (enum pd_log_level)atomic_load(&log_level);
}

static int open_path(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  return fd < 0 ? pd_err_from_errno(errno) : fd;
}

int pd_log_open(const char *path) {
  pthread_mutex_lock(&reopen_lock);
  int rc = 0;
  if (!path) {
    int old = atomic_exchange(&log_fd, 2);
    if (old > 2) close(old);
    log_path[0] = 0;
  } else if (strlen(path) >= sizeof log_path) {
    rc = PD_EINVAL;
  } else {
    int fd = open_path(path);
    if (fd < 0) {
      rc = fd;
    } else {
      snprintf(log_path, sizeof log_path, "%s", path);
      int old = atomic_exchange(&log_fd, fd);
      if (old > 2) close(old);
    }
  }
  pthread_mutex_unlock(&reopen_lock);
  return rc;
}

int pd_log_reopen(void) {
  pthread_mutex_lock(&reopen_lock);
  int rc = 0;
  if (log_path[0]) {
    int fd = open_path(log_path);
    if (fd < 0) {
      rc = fd;
    } else {
      int old = atomic_exchange(&log_fd, fd);
      if (old > 2) close(old);
    }
  }
  pthread_mutex_unlock(&reopen_lock);
  return rc;
}

void pd_log(enum pd_log_level level, const char *msg, const char *fmt, ...) {
  if ((int)level < atomic_load_explicit(&log_level, memory_order_relaxed)) return;
  char line[2048];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=\"%s\"",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   ts.tv_nsec / 1000000, level_names[level], msg);
  if (n < 0) return;
  if (fmt && (size_t)n < sizeof line - 2) {
    line[n++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (m > 0) n += m;
  }
  if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  ssize_t w = write(atomic_load(&log_fd), line, (size_t)n);
  (void)w;
}
