//! The thread pool behind the ABI's `parallel_for`. `threads - 1` workers and the calling
//! thread take task indices from one shared atomic counter, so uneven tasks balance themselves.
//! Between jobs a worker spins for a bounded while (models call `parallel_for` many times in a
//! row, with short serial gaps) and then sleeps on a condition variable, so an idle pool costs
//! no CPU. A call allocates nothing. It must not be used to run Rust code that can block on
//! another task of the same job: tasks run to completion, in any order, on any thread.
//!
//! Protocol, because the job description is plain memory shared with the workers:
//! * `epoch` is odd while the owner replaces the job and even once a job is published; a worker
//!   joins a job by incrementing `active` and *then* reading an even, new `epoch`, and the owner
//!   writes the job only after making `epoch` odd and seeing `active == 0`. Both sides use SeqCst
//!   so that one of them always sees the other (no worker can read a half-written job).
//! * Sleepers and the waiting caller use the same store-then-check pairing with `sleepers` /
//!   `caller_waiting` under the mutex, so no wake-up is lost.
//! * `busy` lets one caller at a time own the pool; a second concurrent (or nested) caller runs
//!   its tasks inline instead, which keeps every use memory-safe.

use std::any::Any;
use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::hint::spin_loop;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use crate::abi::{VitcExec, VitcTaskFn};
use crate::capi::vitc_rt_parallel_for;
use crate::error::RuntimeError;

/// Spin iterations (each one `spin_loop` hint) before a waiting thread goes to sleep. A few
/// tens of microseconds: longer than the gap between two kernels of a model, short enough that
/// an idle pool stops burning CPU almost at once.
const SPIN_ITERS: u32 = 1 << 14;

/// One published job. Written only by the pool's owner while no worker is inside a job.
#[derive(Clone, Copy)]
struct Job {
    task: Option<VitcTaskFn>,
    ctx: *mut c_void,
    count: u32,
}

struct Shared {
    job: UnsafeCell<Job>,
    /// Job generation: odd while the job is being replaced, even when published (0: none yet).
    epoch: AtomicU64,
    /// Workers between joining a job and leaving it.
    active: AtomicU32,
    /// Next task index to hand out. 64 bits so that the one failed claim per thread per job
    /// cannot wrap around past `u32::MAX`.
    next: AtomicU64,
    /// Tasks finished in the current job.
    done: AtomicU32,
    shutdown: AtomicBool,
    sleepers: AtomicU32,
    caller_waiting: AtomicBool,
    lock: Mutex<()>,
    /// Workers sleep here between jobs.
    wake: Condvar,
    /// The caller sleeps here while the last tasks of its job finish.
    finished: Condvar,
}

// SAFETY: `job` is the only non-Sync field; the epoch/active protocol above makes its writes
// and reads exclusive. The raw `ctx` pointer inside it is only handed back to the task.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data (only the sleep/wake handshake), so poison means nothing.
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims and runs tasks of `job` until none are left, then records how many ran.
    fn run_tasks(&self, job: Job) {
        let Some(task) = job.task else { return };
        let mut ran = 0u32;
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= u64::from(job.count) {
                break;
            }
            // SAFETY: the caller of parallel_for promised that task/ctx are valid for every
            // index < count until the call returns, which it does not before `done == count`.
            unsafe { task(job.ctx, index as u32) };
            ran += 1;
        }
        if ran > 0 {
            let before = self.done.fetch_add(ran, Ordering::SeqCst);
            if before + ran == job.count && self.caller_waiting.load(Ordering::SeqCst) {
                let _guard = self.lock();
                self.finished.notify_one();
            }
        }
    }
}

/// A fixed set of threads that runs `parallel_for` jobs. See the module docs for the rules.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Set while one caller owns the pool.
    busy: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl Pool {
    /// Creates a pool of `threads` threads in total, the calling thread included, so
    /// `threads - 1` workers are started. `0` means the machine's available parallelism.
    pub fn new(threads: usize) -> Result<Pool, RuntimeError> {
        let threads = if threads == 0 {
            thread::available_parallelism().map_or(1, NonZeroUsize::get)
        } else {
            threads
        };
        let threads = threads.min(u32::MAX as usize);
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(Job {
                task: None,
                ctx: std::ptr::null_mut(),
                count: 0,
            }),
            epoch: AtomicU64::new(0),
            active: AtomicU32::new(0),
            next: AtomicU64::new(0),
            done: AtomicU32::new(0),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicU32::new(0),
            caller_waiting: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            finished: Condvar::new(),
        });
        // Built up one worker at a time so that, if a spawn fails, dropping `pool` stops the
        // workers already running.
        let mut pool = Pool {
            shared,
            workers: Vec::with_capacity(threads - 1),
            busy: AtomicBool::new(false),
        };
        for n in 1..threads {
            let shared = Arc::clone(&pool.shared);
            let handle = thread::Builder::new()
                .name(format!("vitc-rt-{n}"))
                .spawn(move || worker(&shared))
                .map_err(RuntimeError::ThreadSpawn)?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Total thread count, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` once for every `i < count`, spread over the pool's threads, and returns
    /// when all calls have finished. If any call panics, the first panic is resumed here after
    /// the others have finished.
    pub fn parallel_for<F: Fn(u32) + Sync>(&self, count: u32, f: F) {
        struct Ctx<'a, F> {
            f: &'a F,
            panic: Mutex<Option<Box<dyn Any + Send>>>,
        }
        unsafe extern "C" fn trampoline<F: Fn(u32) + Sync>(ctx: *mut c_void, index: u32) {
            // SAFETY: ctx is the `Ctx<F>` below, alive until parallel_for_raw returns.
            let ctx = unsafe { &*(ctx as *const Ctx<'_, F>) };
            // A panic must not unwind through the C-ABI frames; keep it for the caller.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (ctx.f)(index))) {
                let mut slot = ctx.panic.lock().unwrap_or_else(PoisonError::into_inner);
                slot.get_or_insert(payload);
            }
        }
        let ctx = Ctx {
            f: &f,
            panic: Mutex::new(None),
        };
        // SAFETY: the trampoline matches Ctx<F>, which outlives the call.
        unsafe {
            self.parallel_for_raw(
                count,
                Some(trampoline::<F>),
                &ctx as *const Ctx<'_, F> as *mut c_void,
            );
        }
        if let Some(payload) = ctx
            .panic
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            resume_unwind(payload);
        }
    }

    /// The C-style `parallel_for`: calls `task(task_ctx, i)` for every `i < count`. Does
    /// nothing for `count == 0` or no task.
    ///
    /// # Safety
    /// `task` must be safe to call with `task_ctx` and every index below `count`, from any
    /// thread and concurrently, until this call returns; it must not unwind.
    pub unsafe fn parallel_for_raw(
        &self,
        count: u32,
        task: Option<VitcTaskFn>,
        task_ctx: *mut c_void,
    ) {
        let Some(task_fn) = task else { return };
        if count == 0 {
            return;
        }
        if self.workers.is_empty() || count == 1 || self.busy.swap(true, Ordering::Acquire) {
            // Nothing to share, or another caller owns the pool (possibly our own task):
            // run inline rather than wait or corrupt the current job.
            for index in 0..count {
                // SAFETY: upheld by our caller.
                unsafe { task_fn(task_ctx, index) };
            }
            return;
        }
        let shared = &*self.shared;
        let epoch = shared.epoch.load(Ordering::Relaxed);
        shared.epoch.store(epoch + 1, Ordering::SeqCst);
        wait_until(|| shared.active.load(Ordering::SeqCst) == 0);
        let job = Job {
            task,
            ctx: task_ctx,
            count,
        };
        // SAFETY: epoch is odd and no worker is active, so none can be reading the job.
        unsafe { *shared.job.get() = job };
        shared.next.store(0, Ordering::Relaxed);
        shared.done.store(0, Ordering::Relaxed);
        shared.epoch.store(epoch + 2, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock();
            shared.wake.notify_all();
        }

        shared.run_tasks(job);

        // Wait for the tasks other threads claimed: spin first, then sleep.
        let finished = || shared.done.load(Ordering::SeqCst) == count;
        let mut spins = 0;
        while !finished() && spins < SPIN_ITERS {
            spin_loop();
            spins += 1;
        }
        if !finished() {
            let mut guard = shared.lock();
            shared.caller_waiting.store(true, Ordering::SeqCst);
            while !finished() {
                guard = shared
                    .finished
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            shared.caller_waiting.store(false, Ordering::SeqCst);
        }
        self.busy.store(false, Ordering::Release);
    }

    /// A `vitc_exec` that runs a model on this pool. It points at the pool, which must outlive
    /// every use of the returned value.
    pub fn exec(&self) -> VitcExec {
        VitcExec {
            parallel_for: Some(vitc_rt_parallel_for),
            pool: self as *const Pool as *mut c_void,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock();
            self.shared.wake.notify_all();
        }
        for handle in self.workers.drain(..) {
            // A worker only runs C tasks and cannot panic; nothing to report if it did.
            let _ = handle.join();
        }
    }
}

/// Spins, then yields, until `cond` holds. For waits that end as soon as another thread gets
/// a moment of CPU (leaving a finished job), where sleeping would cost more than it saves.
fn wait_until(cond: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !cond() {
        if spins < SPIN_ITERS {
            spin_loop();
            spins += 1;
        } else {
            thread::yield_now();
        }
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0u64;
    let ready = |epoch: u64, seen: u64| epoch != seen && epoch % 2 == 0;
    loop {
        // Wait for a new published job, or shutdown.
        let mut spins = 0u32;
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            if ready(shared.epoch.load(Ordering::Acquire), seen) {
                break;
            }
            if spins < SPIN_ITERS {
                spin_loop();
                spins += 1;
                continue;
            }
            let mut guard = shared.lock();
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            while !shared.shutdown.load(Ordering::SeqCst)
                && !ready(shared.epoch.load(Ordering::SeqCst), seen)
            {
                guard = shared
                    .wake
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            spins = 0;
        }

        // Join: announce first, then re-read the epoch (see the module docs).
        shared.active.fetch_add(1, Ordering::SeqCst);
        let epoch = shared.epoch.load(Ordering::SeqCst);
        if ready(epoch, seen) {
            seen = epoch;
            // SAFETY: we are counted in `active` and saw a published epoch, so the owner will
            // not rewrite the job until we leave.
            let job = unsafe { *shared.job.get() };
            shared.run_tasks(job);
        }
        shared.active.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    /// Runs one job and checks that every index ran exactly once.
    fn check_once(pool: &Pool, count: u32, hits: &[AtomicU32]) {
        for hit in &hits[..count as usize] {
            hit.store(0, Ordering::Relaxed);
        }
        pool.parallel_for(count, |i| {
            hits[i as usize].fetch_add(1, Ordering::Relaxed);
        });
        for (i, hit) in hits[..count as usize].iter().enumerate() {
            assert_eq!(
                hit.load(Ordering::Relaxed),
                1,
                "index {i} of {count} on {} threads",
                pool.threads()
            );
        }
    }

    #[test]
    fn every_index_runs_exactly_once() {
        let hits: Vec<AtomicU32> = (0..1000).map(|_| AtomicU32::new(0)).collect();
        for threads in [1, 2, 4] {
            let pool = Pool::new(threads).unwrap();
            assert_eq!(pool.threads(), threads);
            // Back to back, with every count, to catch lost wake-ups and stale claims.
            for round in 0..300 {
                for count in [0, 1, 7, 1000] {
                    check_once(&pool, count, &hits);
                }
                if round % 100 == 99 {
                    // Let the workers fall asleep so the wake-up path runs too.
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    #[test]
    fn reusable_across_thousands_of_calls_quickly() {
        let pool = Pool::new(4).unwrap();
        let total = AtomicUsize::new(0);
        let start = Instant::now();
        for _ in 0..20_000 {
            pool.parallel_for(16, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 20_000 * 16);
        // Generous (CI machines are shared and may have fewer cores than threads); it catches
        // a pool that sleeps or sets up threads on every call.
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn tasks_share_the_work() {
        // With slow tasks every thread gets some: the caller does not run them all alone.
        let pool = Pool::new(4).unwrap();
        let names = Mutex::new(std::collections::HashSet::new());
        pool.parallel_for(64, |_| {
            thread::sleep(Duration::from_millis(2));
            names.lock().unwrap().insert(thread::current().id());
        });
        assert!(names.lock().unwrap().len() > 1);
    }

    #[test]
    fn one_thread_runs_inline_in_order() {
        let pool = Pool::new(1).unwrap();
        let order = Mutex::new(Vec::new());
        let me = thread::current().id();
        pool.parallel_for(5, |i| {
            assert_eq!(thread::current().id(), me);
            order.lock().unwrap().push(i);
        });
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn nested_and_concurrent_calls_run_inline() {
        let pool = Pool::new(3).unwrap();
        let total = AtomicUsize::new(0);
        pool.parallel_for(8, |_| {
            pool.parallel_for(4, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 32);

        // Several threads sharing one pool: each call still runs every index once.
        let hits: Vec<AtomicU32> = (0..4 * 100).map(|_| AtomicU32::new(0)).collect();
        thread::scope(|s| {
            for t in 0..4u32 {
                let (pool, hits) = (&pool, &hits);
                s.spawn(move || {
                    for _ in 0..200 {
                        pool.parallel_for(100, |i| {
                            hits[(t * 100 + i) as usize].fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 200));
    }

    #[test]
    fn panics_reach_the_caller_after_the_job() {
        let pool = Pool::new(2).unwrap();
        let ran = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.parallel_for(10, |i| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert_ne!(i, 3, "task 3 fails");
            })
        }));
        assert!(result.is_err());
        assert_eq!(ran.load(Ordering::Relaxed), 10);
        // The pool still works.
        let hits: Vec<AtomicU32> = (0..7).map(|_| AtomicU32::new(0)).collect();
        check_once(&pool, 7, &hits);
    }

    #[test]
    fn zero_threads_means_available_parallelism() {
        let pool = Pool::new(0).unwrap();
        assert!(pool.threads() >= 1);
    }

    #[test]
    fn null_task_does_nothing() {
        let pool = Pool::new(2).unwrap();
        // SAFETY: no task to call.
        unsafe { pool.parallel_for_raw(10, None, std::ptr::null_mut()) };
    }
}
