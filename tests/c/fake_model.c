/*
 * fake_model.c — a hand-written stand-in for a vitc model, used ONLY to test the test tools
 * themselves (tests/c/vitc_driver.c and the Rust runtime's loader) while no compiled model
 * exists. It is not vitc output and says nothing about the compiler.
 *
 * It implements ABI v1 for y = 2x + 1 over an input of shape [1, FAKE_N] (default 4): a first
 * parallel_for writes 2x into the workspace, a second one adds 1 into the output, one task per
 * element, so a driver's parallel_for and workspace handling both matter. It checks its
 * arguments as the ABI demands. Build knobs, to test the tools' failure paths:
 *   -DFAKE_PREFIX=name        symbol prefix (default vitc)
 *   -DFAKE_N=n                elements (default 4)
 *   -DFAKE_ABI_VERSION=v      reported ABI version (default 1)
 *   -DFAKE_SLOPPY_ALIGN       accept a misaligned workspace (a bug --check-args must catch)
 *
 *   cc -shared -fPIC -O2 -o fake_model.so tests/c/fake_model.c
 */
#include <stddef.h>
#include <stdint.h>

#ifndef FAKE_PREFIX
#define FAKE_PREFIX vitc
#endif
#ifndef FAKE_N
#define FAKE_N 4
#endif
#ifndef FAKE_ABI_VERSION
#define FAKE_ABI_VERSION 1
#endif

#define FAKE_CAT_(a, b) a##b
#define FAKE_CAT(a, b) FAKE_CAT_(a, b)
#define FAKE_FN(name) FAKE_CAT(FAKE_PREFIX, name)

#ifndef VITC_EXEC_DEFINED
#define VITC_EXEC_DEFINED
typedef void (*vitc_task_fn)(void *task_ctx, uint32_t index);
typedef struct vitc_exec {
  void (*parallel_for)(void *pool, uint32_t count, vitc_task_fn task, void *task_ctx);
  void *pool;
} vitc_exec;
#endif

static const int64_t shape[2] = {1, FAKE_N};

uint32_t FAKE_FN(_abi_version)(void) { return FAKE_ABI_VERSION; }
uint32_t FAKE_FN(_num_inputs)(void) { return 1; }
uint32_t FAKE_FN(_num_outputs)(void) { return 1; }
uint32_t FAKE_FN(_input_rank)(uint32_t i) { return i == 0 ? 2 : 0; }
const int64_t *FAKE_FN(_input_shape)(uint32_t i) { return i == 0 ? shape : NULL; }
uint32_t FAKE_FN(_output_rank)(uint32_t i) { return i == 0 ? 2 : 0; }
const int64_t *FAKE_FN(_output_shape)(uint32_t i) { return i == 0 ? shape : NULL; }
size_t FAKE_FN(_workspace_size)(void) { return FAKE_N * sizeof(float); }

struct job {
  const float *x;
  float *tmp; /* in the workspace */
  float *y;
};

static void doubled(void *ctx, uint32_t i) {
  struct job *job = ctx;
  job->tmp[i] = 2.0f * job->x[i];
}

static void plus_one(void *ctx, uint32_t i) {
  struct job *job = ctx;
  job->y[i] = job->tmp[i] + 1.0f;
}

/* Runs tasks through the caller's pool, or inline when there is none (exec or its
 * parallel_for NULL), as the ABI allows. */
static void run_tasks(const vitc_exec *exec, uint32_t count, vitc_task_fn task, void *ctx) {
  if (exec && exec->parallel_for) {
    exec->parallel_for(exec->pool, count, task, ctx);
  } else {
    for (uint32_t i = 0; i < count; i++) task(ctx, i);
  }
}

int32_t FAKE_FN(_run)(const float *const *inputs, float *const *outputs, void *workspace,
                      const vitc_exec *exec) {
  if (!inputs || !inputs[0]) return 1;
  if (!outputs || !outputs[0]) return 2;
  if (!workspace) return 3;
#ifndef FAKE_SLOPPY_ALIGN
  if ((uintptr_t)workspace % 64 != 0) return 4;
#endif
  struct job job = {inputs[0], workspace, outputs[0]};
  run_tasks(exec, FAKE_N, doubled, &job);
  run_tasks(exec, 0, plus_one, &job); /* an empty job: a pool must return at once */
  run_tasks(exec, FAKE_N, plus_one, &job);
  return 0;
}
