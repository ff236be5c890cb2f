/* pd_tcp.c -- see pd_tcp.h. */
#include "pd_tcp.h"

#include <stdlib.h>

#include "pd_err.h"

int pd_tcp_listen(uv_loop_t *loop, uv_tcp_t *listener, const char *host, int port, int backlog,
                  uv_connection_cb cb, int *bound_port) {
  struct sockaddr_storage addr;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) &&
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr))
    return PD_EINVAL;
  uv_tcp_init(loop, listener);
  int rc = uv_tcp_bind(listener, (const struct sockaddr *)&addr, 0);
  if (!rc) rc = uv_listen((uv_stream_t *)listener, backlog, cb);
  if (rc) return rc == UV_EADDRINUSE ? PD_EEXIST : rc == UV_EACCES ? PD_EPERM : PD_ESYS;
  if (bound_port) {
    struct sockaddr_storage name;
    int len = sizeof name;
    uv_tcp_getsockname(listener, (struct sockaddr *)&name, &len);
    *bound_port = name.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&name)->sin6_port)
                                             : ntohs(((struct sockaddr_in *)&name)->sin_port);
  }
  return PD_OK;
}

static void free_handle(uv_handle_t *h) {
  free(h);
}

void pd_tcp_refuse(uv_loop_t *loop, uv_stream_t *listener) {
  uv_tcp_t *t = malloc(sizeof *t);
  if (!t) return;
  uv_tcp_init(loop, t);
  uv_accept(listener, (uv_stream_t *)t);
  uv_close((uv_handle_t *)t, free_handle);
}
