//! The pool's C API, declared in `include/vitc.h`. Thin shims over [`Pool`]: they own the
//! null-pointer conventions the header documents and nothing else. They never unwind into C.

use std::ffi::c_void;

use crate::abi::VitcTaskFn;
use crate::pool::Pool;

/// `vitc_rt_pool *vitc_rt_pool_new(uint32_t threads)`: a pool of `threads` threads including
/// the caller (0: available parallelism); NULL if a worker could not be started.
#[no_mangle]
pub extern "C" fn vitc_rt_pool_new(threads: u32) -> *mut Pool {
    match Pool::new(threads as usize) {
        Ok(pool) => Box::into_raw(Box::new(pool)),
        Err(_) => std::ptr::null_mut(),
    }
}

/// `void vitc_rt_parallel_for(void *pool, uint32_t count, vitc_task_fn task, void *task_ctx)`.
///
/// # Safety
/// `pool` is NULL or a live pool from [`vitc_rt_pool_new`]; `task` is NULL or safe to call with
/// `task_ctx` and every index below `count`, concurrently, until this call returns.
#[no_mangle]
pub unsafe extern "C" fn vitc_rt_parallel_for(
    pool: *mut c_void,
    count: u32,
    task: Option<VitcTaskFn>,
    task_ctx: *mut c_void,
) {
    let Some(task_fn) = task else { return };
    // SAFETY: per the contract above.
    match unsafe { (pool as *const Pool).as_ref() } {
        Some(pool) => unsafe { pool.parallel_for_raw(count, task, task_ctx) },
        None => {
            for index in 0..count {
                unsafe { task_fn(task_ctx, index) };
            }
        }
    }
}

/// `void vitc_rt_pool_free(vitc_rt_pool *pool)`: joins the workers and frees the pool.
///
/// # Safety
/// `pool` is NULL or came from [`vitc_rt_pool_new`], is freed once, and is not in use.
#[no_mangle]
pub unsafe extern "C" fn vitc_rt_pool_free(pool: *mut Pool) {
    if !pool.is_null() {
        // SAFETY: per the contract above, we own it now.
        drop(unsafe { Box::from_raw(pool) });
    }
}

/// `uint32_t vitc_rt_pool_threads(const vitc_rt_pool *pool)`: total threads, 0 for NULL.
///
/// # Safety
/// `pool` is NULL or a live pool from [`vitc_rt_pool_new`].
#[no_mangle]
pub unsafe extern "C" fn vitc_rt_pool_threads(pool: *const Pool) -> u32 {
    // SAFETY: per the contract above.
    unsafe { pool.as_ref() }.map_or(0, |pool| pool.threads() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    unsafe extern "C" fn bump(ctx: *mut c_void, index: u32) {
        let hits = unsafe { &*(ctx as *const Vec<AtomicU32>) };
        hits[index as usize].fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn c_api_round_trip() {
        let hits: Vec<AtomicU32> = (0..100).map(|_| AtomicU32::new(0)).collect();
        let ctx = &hits as *const Vec<AtomicU32> as *mut c_void;
        let pool = vitc_rt_pool_new(3);
        assert!(!pool.is_null());
        unsafe {
            assert_eq!(vitc_rt_pool_threads(pool), 3);
            vitc_rt_parallel_for(pool as *mut c_void, 100, Some(bump), ctx);
            vitc_rt_parallel_for(pool as *mut c_void, 100, None, ctx);
            vitc_rt_parallel_for(pool as *mut c_void, 0, Some(bump), ctx);
            // A null pool runs inline.
            vitc_rt_parallel_for(std::ptr::null_mut(), 100, Some(bump), ctx);
            vitc_rt_pool_free(pool);
            vitc_rt_pool_free(std::ptr::null_mut());
            assert_eq!(vitc_rt_pool_threads(std::ptr::null()), 0);
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 2));
    }
}
