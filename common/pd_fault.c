/* pd_fault.c -- counters behind pd_fault_hit; see pd_fault.h. */
#include "pd_fault.h"

#include <stdatomic.h>

static struct {
  atomic_long countdown; /* hits left before the failure; 0 = disarmed */
  atomic_int persistent;
  atomic_int tripped; /* set once the countdown reached its failure, for persistent sites */
  atomic_long fired;
} sites[PD_FAULT_N_SITES];

void pd_fault_arm(enum pd_fault_site site, long nth, int persistent) {
  atomic_store(&sites[site].countdown, nth);
  atomic_store(&sites[site].persistent, persistent);
  atomic_store(&sites[site].tripped, 0);
  atomic_store(&sites[site].fired, 0);
}

void pd_fault_disarm_all(void) {
  for (int i = 0; i < PD_FAULT_N_SITES; i++) pd_fault_arm((enum pd_fault_site)i, 0, 0);
}

int pd_fault_hit(enum pd_fault_site site) {
  if (atomic_load_explicit(&sites[site].tripped, memory_order_relaxed)) {
    atomic_fetch_add(&sites[site].fired, 1);
    return 1;
  }
  if (atomic_load_explicit(&sites[site].countdown, memory_order_relaxed) == 0) return 0;
  long left = atomic_fetch_sub(&sites[site].countdown, 1) - 1;
  if (left == 0) {
    if (atomic_load(&sites[site].persistent)) atomic_store(&sites[site].tripped, 1);
    atomic_fetch_add(&sites[site].fired, 1);
    return 1;
  }
  if (left < 0) atomic_store(&sites[site].countdown, 0); /* raced past: disarm */
  return 0;
}

long pd_fault_fired(enum pd_fault_site site) {
  return atomic_load(&sites[site].fired);
}
