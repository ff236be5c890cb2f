/*
 * pd_err.h -- the one error enum of prefixd.
 *
 * Every function that can fail returns int: 0 on success or one of the negative PD_E* codes
 * below. Codes from other worlds (errno, LMDB, CUDA, nghttp2) are translated at the module
 * boundary that sees them, so a caller only ever branches on these. pd_strerror() gives the one
 * human string for each; a module that knows more (a file name, an offset) writes it into an
 * error buffer supplied by its caller, never into a global.
 */
#ifndef PD_ERR_H
#define PD_ERR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum pd_status {
  PD_OK = 0,
  PD_ENOMEM = -1,       /* an allocation failed */
  PD_EINVAL = -2,       /* an argument or input is malformed */
  PD_ENOTFOUND = -3,    /* no such key, tensor, tenant, prefix */
  PD_EEXIST = -4,       /* already exists */
  PD_EFULL = -5,        /* a pool, tier or queue has no room (after evicting what it may) */
  PD_EBUSY = -6,        /* in use or pinned: may not be evicted, freed or written */
  PD_EIO = -7,          /* an I/O error (EIO, short read/write) */
  PD_ECORRUPT = -8,     /* stored or supplied data fails validation (checksum, bounds) */
  PD_EUNSUPPORTED = -9, /* valid but not supported (model arch, tensor type, format version) */
  PD_ERANGE = -10,      /* a value is out of its allowed range (context length, token id) */
  PD_EPERM = -11,       /* not allowed for this tenant */
  PD_EAUTH = -12,       /* missing or wrong credentials */
  PD_ECANCELLED = -13,  /* cancelled by the client or by shutdown */
  PD_ETIMEDOUT = -14,   /* a deadline passed */
  PD_ENOSPC = -15,      /* the disk is full */
  PD_EDEVICE = -16,     /* a GPU/driver error */
  PD_ELIMIT = -17,      /* a tenant quota or a configured limit refuses the request */
  PD_ESYS = -18,        /* another operating-system error */
  PD_ECODE_MIN = -18
};

/* Returns a static, never-freed string for any int; unknown codes get "unknown error". */
const char *pd_strerror(int code);

/* Translates an errno value (positive) into a pd_status. */
int pd_err_from_errno(int errnum);

/* Writes the printf-formatted reason into err (capacity errlen; nothing when err is NULL or
 * errlen 0) and returns rc: `return pd_errf(err, errlen, PD_EINVAL, "bad %s", what);`. */
int pd_errf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#ifdef __cplusplus
}
#endif

#endif /* PD_ERR_H */
