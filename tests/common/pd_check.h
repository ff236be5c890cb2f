/*
 * pd_check.h -- the one way our Check test programs run their suite: returns the process exit
 * code (0 when every test passed). fork = 0 runs the tests in-process (needed where a CUDA
 * context must survive, or to debug).
 */
#ifndef PD_CHECK_H
#define PD_CHECK_H

#include <check.h>
#include <stdlib.h>

static inline int pd_check_run(Suite *s, int fork) {
  SRunner *sr = srunner_create(s);
  if (!fork) srunner_set_fork_status(sr, CK_NOFORK);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif /* PD_CHECK_H */
