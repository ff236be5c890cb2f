/*
 * pd_log.h -- structured log lines with levels.
 *
 * One line per event, logfmt style, so both people and log shippers read it:
 *
 *     ts=2026-11-22T11:40:02.123Z level=info msg="listening" addr=127.0.0.1:7777
 *
 * The caller writes the key=value part with printf formatting after the message. Thread-safe:
 * each line is formatted into a local buffer and written with one write(2). The destination is
 * stderr or a file; pd_log_reopen() reopens the file (the daemon calls it on SIGHUP so logrotate
 * works).
 */
#ifndef PD_LOG_H
#define PD_LOG_H

enum pd_log_level { PD_LOG_DEBUG = 0, PD_LOG_INFO = 1, PD_LOG_WARN = 2, PD_LOG_ERROR = 3 };

/* Parses "debug", "info", "warn", "error". Returns 0 or -1. */
int pd_log_parse_level(const char *s, enum pd_log_level *out);

void pd_log_set_level(enum pd_log_level level);
enum pd_log_level pd_log_get_level(void);

/* Sends logs to path (appending), or to stderr when path is NULL. Returns 0 or a PD_E* code. */
int pd_log_open(const char *path);
/* Reopens the current path (after rotation); a no-op for stderr. */
int pd_log_reopen(void);

/* msg is quoted; fmt (may be NULL) formats the key=value fields that follow it. */
void pd_log(enum pd_log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* PD_LOG_H */
