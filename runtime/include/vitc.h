/*
 * vitc.h — the vitc runtime's C interface.
 *
 * Two things live here:
 *   1. The ABI v1 types shared by every library vitc writes (vitc_task_fn, vitc_exec). A
 *      generated model header declares the same types under the same VITC_EXEC_DEFINED guard,
 *      so a program may include both headers in either order.
 *   2. The runtime's thread pool, whose vitc_rt_parallel_for is meant to be put in
 *      vitc_exec.parallel_for. Link libvitc_runtime.a (or .so) to get it.
 *
 * The model functions themselves (P_abi_version, P_run, ...) are declared by the header vitc
 * writes beside each compiled model, because their names carry the model's symbol prefix.
 */
#ifndef VITC_RUNTIME_H
#define VITC_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef VITC_EXEC_DEFINED
#define VITC_EXEC_DEFINED
/* One unit of parallel work: called as task(task_ctx, index) for each index < count. */
typedef void (*vitc_task_fn)(void *task_ctx, uint32_t index);

/* How a model may spread work over threads. Pass NULL (or a NULL parallel_for) to P_run to run
 * everything on the calling thread. parallel_for must call task(task_ctx, i) exactly once for
 * every i < count, possibly concurrently, and return only when all calls have finished. */
typedef struct vitc_exec {
  void (*parallel_for)(void *pool, uint32_t count, vitc_task_fn task, void *task_ctx);
  void *pool;
} vitc_exec;
#endif /* VITC_EXEC_DEFINED */

/* The runtime's thread pool. Opaque. */
typedef struct vitc_rt_pool vitc_rt_pool;

/* Creates a pool of `threads` threads in total, counting the thread that calls
 * vitc_rt_parallel_for: threads - 1 workers are started. threads = 0 means the machine's
 * available parallelism. A pool of 1 thread starts no worker and runs every task inline.
 * Returns NULL if a worker thread could not be started. */
vitc_rt_pool *vitc_rt_pool_new(uint32_t threads);

/* Runs task(task_ctx, i) once for every i < count on the pool's threads (the caller included)
 * and returns when all have finished. `pool` is a vitc_rt_pool* passed as void* so that this
 * function fits vitc_exec.parallel_for as is:
 *
 *     vitc_exec exec = { vitc_rt_parallel_for, pool };
 *     int32_t rc = P_run(inputs, outputs, workspace, &exec);
 *
 * count = 0 or task = NULL does nothing; pool = NULL runs the tasks inline, in order.
 * Thread safety: meant to be called by one thread at a time per pool. A call that arrives while
 * the pool is busy (from another thread, or from inside one of its own tasks) is not an error:
 * it runs its tasks inline on its own thread. Use one pool per thread for parallel runs. */
void vitc_rt_parallel_for(void *pool, uint32_t count, vitc_task_fn task, void *task_ctx);

/* Stops and joins the pool's workers and frees it. NULL is ignored. The pool must not be in
 * use by any thread. */
void vitc_rt_pool_free(vitc_rt_pool *pool);

/* The pool's total thread count, caller included (at least 1); 0 for NULL. */
uint32_t vitc_rt_pool_threads(const vitc_rt_pool *pool);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* VITC_RUNTIME_H */
