/* pd_err.c -- strings for the project-wide error enum, the errno translation, pd_errf. */
#include "pd_err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

const char *pd_strerror(int code) {
  switch (code) {
  case PD_OK: return "ok";
  case PD_ENOMEM: return "out of memory";
  case PD_EINVAL: return "invalid argument";
  case PD_ENOTFOUND: return "not found";
  case PD_EEXIST: return "already exists";
  case PD_EFULL: return "no room left";
  case PD_EBUSY: return "in use or pinned";
  case PD_EIO: return "I/O error";
  case PD_ECORRUPT: return "corrupt data";
  case PD_EUNSUPPORTED: return "not supported";
  case PD_ERANGE: return "value out of range";
  case PD_EPERM: return "permission denied";
  case PD_EAUTH: return "unauthenticated";
  case PD_ECANCELLED: return "cancelled";
  case PD_ETIMEDOUT: return "deadline exceeded";
  case PD_ENOSPC: return "no space left on device";
  case PD_EDEVICE: return "GPU device error";
  case PD_ELIMIT: return "limit exceeded";
  case PD_ESYS: return "system error";
  default: return "unknown error";
  }
}

int pd_err_from_errno(int errnum) {
  switch (errnum) {
  case 0: return PD_OK;
  case ENOMEM: return PD_ENOMEM;
  case EINVAL: return PD_EINVAL;
  case ENOENT: return PD_ENOTFOUND;
  case EEXIST: return PD_EEXIST;
  case EBUSY: return PD_EBUSY;
  case EIO: return PD_EIO;
  case ENOSPC: return PD_ENOSPC;
  case EDQUOT: return PD_ENOSPC;
  case EACCES: return PD_EPERM;
  case EPERM: return PD_EPERM;
  case ERANGE: return PD_ERANGE;
  case ETIMEDOUT: return PD_ETIMEDOUT;
  case ECANCELED: return PD_ECANCELLED;
  default: return PD_ESYS;
  }
}

int pd_errf(char *err, size_t errlen, int rc, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return rc;
}
