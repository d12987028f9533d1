/*
 * rt_pool_test.c — checks the vitc runtime's C API (runtime/include/vitc.h) from C: that the
 * header compiles, that libvitc_runtime links into a C program, and that vitc_rt_parallel_for
 * runs every index exactly once, back to back, for several counts and thread counts, including
 * through a vitc_exec as a model would call it. Run by tests/c/selftest.sh:
 *
 *   cc -O2 -Wall -Wextra -std=c11 -pthread -Iruntime/include tests/c/rt_pool_test.c \
 *      target/debug/libvitc_runtime.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vitc.h"

#define MAX_COUNT 1000

static atomic_uint hits[MAX_COUNT];

static void bump(void *ctx, uint32_t index) {
  (void)ctx;
  atomic_fetch_add(&hits[index], 1);
}

/* Calls parallel_for the way a model does: through a vitc_exec. */
static void run_via_exec(const vitc_exec *exec, uint32_t count) {
  exec->parallel_for(exec->pool, count, bump, NULL);
}

int main(void) {
  static const uint32_t thread_counts[] = {1, 2, 4, 0};
  static const uint32_t counts[] = {0, 1, 7, MAX_COUNT};
  int failures = 0;
  for (size_t t = 0; t < sizeof thread_counts / sizeof thread_counts[0]; t++) {
    vitc_rt_pool *pool = vitc_rt_pool_new(thread_counts[t]);
    if (!pool) {
      fprintf(stderr, "vitc_rt_pool_new(%u) failed\n", thread_counts[t]);
      return 1;
    }
    uint32_t threads = vitc_rt_pool_threads(pool);
    if (threads == 0 || (thread_counts[t] != 0 && threads != thread_counts[t])) {
      fprintf(stderr, "vitc_rt_pool_threads = %u for a pool of %u\n", threads, thread_counts[t]);
      failures++;
    }
    vitc_exec exec = {vitc_rt_parallel_for, pool};
    for (int round = 0; round < 200; round++) {
      for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        uint32_t count = counts[c];
        for (uint32_t i = 0; i < MAX_COUNT; i++) atomic_store(&hits[i], 0);
        run_via_exec(&exec, count);
        for (uint32_t i = 0; i < MAX_COUNT; i++) {
          unsigned want = i < count ? 1 : 0, got = atomic_load(&hits[i]);
          if (got != want) {
            fprintf(stderr, "threads=%u count=%u index %u ran %u times\n", threads, count, i, got);
            failures++;
            break;
          }
        }
      }
    }
    vitc_rt_parallel_for(pool, 10, NULL, NULL); /* a NULL task does nothing */
    vitc_rt_pool_free(pool);
  }
  /* A NULL pool runs inline; freeing NULL is a no-op. */
  for (uint32_t i = 0; i < 5; i++) atomic_store(&hits[i], 0);
  vitc_rt_parallel_for(NULL, 5, bump, NULL);
  for (uint32_t i = 0; i < 5; i++) failures += atomic_load(&hits[i]) != 1;
  vitc_rt_pool_free(NULL);
  failures += vitc_rt_pool_threads(NULL) != 0;

  printf("rt_pool_test: %s\n", failures ? "FAIL" : "OK");
  return failures ? 1 : 0;
}
