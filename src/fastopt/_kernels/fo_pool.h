/* fastopt's thread pool for the element-wise kernels.
 *
 * One per process: only pool.pyx compiles this header, and every kernel module (each family,
 * each build) runs its jobs through pool.pxd's run (pool.pyx says what a pool per module cost).
 *
 * Why not an OpenMP parallel region: it ends in a barrier that waits for every thread of the
 * team, running or not. With the other cores busy (a notebook beside another job, a process
 * whose own threads are busy) a 30 us call then waits out a scheduler time slice, milliseconds.
 * Here the calling thread works through the chunks of a job itself, and helper threads take
 * chunks only while they are actually running: the caller waits for the chunks a helper has
 * already started, never for a helper to wake up. (oneTBB's task arenas work the same way; from
 * C they would need a C++ build and a shared library outside the loader's path.)
 *
 * Chunks are claimed by compare-and-swap on one 64-bit word holding (job number, first and last
 * unclaimed chunk): a helper that wakes late can never run a chunk of a newer job with an older
 * job's function. The caller claims from the front and helpers from the back, so from one call
 * to the next each thread runs mostly the same chunks and finds their data in its own core's
 * cache; claimed alternately, they were run by the other core half the time. Adam on 1e5 float32
 * elements, 2 threads, this 2-vCPU Intel VM, calls back to back: 34.0-38.4 us claimed in order,
 * 29.5-31.2 two-ended (batches of 50 calls, medians of 20 batches, both builds in one process);
 * 0.86-0.87x from 5e4 to 2e5, level from 3e5 (past the caches). A job of more chunks than the
 * word counts runs them in groups.
 * One job at a time: a second caller (another Python thread) that finds the pool busy runs its
 * job on its own thread. A helper polls for a new job for FO_POLL_SECONDS after each one
 * (back-to-back calls find it awake), then sleeps on a condition variable, so it never spins
 * against other work for long; a sleeping helper is woken only
 * for a job long enough to pay for the wake (fo_pool_wake_if_worth). After fork() the child
 * starts with no helpers and makes new ones on first use; it never runs a job on an OpenMP
 * team, since GNU OpenMP's thread pool does not survive fork (a region in the child waits
 * forever at its end for the parent's workers) and torch's DataLoader-style workers fork after
 * torch has started that pool.
 *
 * What no pool can avoid: a helper preempted in the middle of a chunk holds the call up until
 * the scheduler runs it again, since an in-place update cannot be redone by someone else. On a
 * machine with more runnable threads than cores that happens often. So when the caller waited
 * for helpers longer than it worked itself, the next calls run on the caller alone (1, 2, 4,
 * ... up to 1024 calls, halving again after each call where the helpers kept up).
 *
 * Helpers are kept off the calling thread's CPU (their affinity is the caller's minus the CPU
 * it runs on, updated when the caller moves). Otherwise the scheduler may wake a sleeping
 * helper onto the caller's own CPU, where it preempts the caller and runs its chunks on the same
 * core. Linux does that when the idle CPUs' vCPUs are descheduled by the hypervisor (a cloud VM
 * between bursts of work): a woken thread is not placed on a vCPU that is not running. On a
 * 2-vCPU VM, Adam on 1e5 float32 elements with 1 ms of other work before each call took 387 us on
 * 2 threads against 346 us on 1 (1158 of 1181 helper chunks ran on the caller's CPU); with the
 * helper kept off it, 217 us.
 *
 * Beside torch the other cores are often not free: torch's OpenMP workers spin for ~10 ms after
 * each of its parallel regions (GNU OpenMP's default spin count), so right after a backward
 * pass a helper would share its core with a spinning thread and a step would run at about one
 * thread's speed. A thread that sets fo_pool_openmp (fastopt.torch does, around its steps)
 * runs its long jobs on its OpenMP team instead, which is torch's: one libgomp per process,
 * whose spinning workers take the job at once. Chunks are still claimed dynamically; the
 * region's end waits for every team thread, as each of torch's own operations does. A team
 * thread that is not running (another process holds its core) makes that wait last a
 * scheduler time slice, so only jobs of FO_POOL_OPENMP_MIN_CHUNKS chunks or more (~1M
 * elements) go to the team, where the wait is not far beyond the work; shorter ones run on
 * the pool, which never waits on a thread that is not running. fastopt.torch.Adam on a
 * 2-vCPU Zen 2 VM, medians (team against pool, two runs): 1e7 elements right after a torch
 * matmul, 12.9 ; 11.0 ms against 16.1 ; 14.4 ms; 1e6 elements with one core busy, 1.39
 * against 1.23 ms (p95 8.0 against 2.7 ms); 1000 x 64 with one core busy, 9.6 against 3.9 ms.
 * On a 2-vCPU Intel Xeon VM (AVX-512) at 1e6, float32: in rounds after torch fused and
 * DeepSpeedCPUAdam (their OpenMP workers spinning), 333-339 against 367-391 us (DeepSpeed
 * 352-356); with one core busy, medians 364-380 against 556 us, p95 7.3 against 1.4-2.8 ms
 * (torch fused 462-504 us, p95 7.7 ms; DeepSpeed 379-438 us, p95 13-14 ms): so 1e6-element
 * steps (16 chunks) go to the team too, as both peers' do, and 1e5-element ones (8) do not.
 *
 * Every element is computed the same way whoever runs its chunk, so results do not depend on
 * the thread count or on which thread ran what. That includes the floating-point environment:
 * a thread's MXCSR (rounding mode, flush-to-zero and denormals-are-zero, exception masks) is
 * its own, and the caller's may not be the default (fesetround; a library built with
 * -ffast-math sets FTZ and DAZ when it is loaded). So each job carries the caller's control
 * bits, and every thread that runs its chunks takes them first (the flags an operation raises
 * stay in the thread that raised them).
 */
#ifndef FO_POOL_H
#define FO_POOL_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FO_CPU_RELAX() _mm_pause()
#else
#define FO_CPU_RELAX() ((void)0)
#endif

typedef void (*fo_chunk_fn)(void *ctx, Py_ssize_t chunk);

/* MXCSR's control bits (DAZ, exception masks, rounding control, FTZ); bits 0-5 are flags */
#define FO_CSR_CONTROL 0xFFC0u
#if defined(__x86_64__) || defined(__i386__)
static inline unsigned fo_csr_control(void) { return _mm_getcsr() & FO_CSR_CONTROL; }
/* Take `control` (from fo_csr_control) in this thread; returns this thread's control before. */
static inline unsigned fo_csr_take(unsigned control) {
    unsigned csr = _mm_getcsr();
    if ((csr & FO_CSR_CONTROL) != control)
        _mm_setcsr((csr & ~FO_CSR_CONTROL) | control);
    return csr & FO_CSR_CONTROL;
}
#else
static inline unsigned fo_csr_control(void) { return 0; }
static inline unsigned fo_csr_take(unsigned control) { (void)control; return 0; }
#endif

enum { FO_MAX_HELPERS = 255 };
/* A helper polls this long before sleeping: long enough for the Python between two calls of a
 * large layer (a call's own checks and result, run with the caches cold after the call: ~40 us
 * for a (4096, 1000) softmax cross-entropy here), since a woken helper arrives 40-60 us late on
 * a VM. With 50 us polls, this Intel VM, 2 threads, (4096, 1000) float32 calls back to back
 * through fastopt.layers, alternated processes: softmax cross-entropy 816-820 -> 792-810 us,
 * softmax 765-795 -> 739-757, log-softmax 794-825 -> 771-781 (a job of 32 chunks of 20 us
 * after 60 us of Python: 356 -> 325 us; after 200 us both 357-360). */
static const double FO_POLL_SECONDS = 150e-6;
/* a call this soon after the last job ended follows it in a run of calls (the wake rule) */
static const double FO_RUN_SECONDS = 100e-6;

enum { FO_WAKES = 8 };             /* wakes whose median is the estimate */

static struct {
    pthread_mutex_t call_lock;      /* held by the caller running a job */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    _Atomic uint64_t claim;         /* job << 32 | front << 16 | back: [front, back) unclaimed */
    _Atomic Py_ssize_t done;        /* chunks of the current job finished */
    _Atomic int sleepers;
    /* the current job: written only between jobs, read by helpers after they load `claim` */
    _Atomic(fo_chunk_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int helpers_wanted;     /* helpers with a smaller index take part in this job */
    _Atomic unsigned csr_control;   /* the caller's MXCSR control bits */
    int helpers;                    /* helper threads started */
    int avoided_cpu;                /* the helpers may run anywhere the caller may but here */
    double wake_seconds;            /* what waking the sleeping helpers costs the caller */
    double wakes[FO_WAKES];         /* the last wakes' costs */
    unsigned nwakes;
    double chunk_seconds;           /* a chunk of the last job, run by the caller */
    double ended;                   /* when the last job ended */
    int serial_calls;               /* calls left to run on the caller alone (back-off) */
    int backoff;                    /* length of the next back-off */
    int atfork_registered;
    pthread_t threads[FO_MAX_HELPERS];
} fo_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
             .avoided_cpu = -1};

struct fo_pool_state {
    int helpers, serial_calls, backoff;
    double wake_seconds, chunk_seconds;
};
static struct fo_pool_state fo_pool_state_now(void) {
    struct fo_pool_state s = {fo_pool.helpers, fo_pool.serial_calls, fo_pool.backoff,
                              fo_pool.wake_seconds, fo_pool.chunk_seconds};
    return s;
}

static double fo_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

enum { FO_MAX_CHUNKS = 0xFFFF };    /* chunks one claim word counts (16 bits each end) */

/* Claim and run chunks of `job` until none is left (or the job is over), at most `most` of
 * them: the first unclaimed one, or (`from_back`, the helpers) the last. Returns how many ran. */
static Py_ssize_t fo_pool_work(uint32_t job, int from_back, Py_ssize_t most) {
    Py_ssize_t ran = 0;
    while (ran < most) {
        uint64_t word = atomic_load_explicit(&fo_pool.claim, memory_order_acquire);
        if ((uint32_t)(word >> 32) != job)
            break;
        Py_ssize_t front = (Py_ssize_t)(word >> 16 & 0xFFFF), back = (Py_ssize_t)(word & 0xFFFF);
        /* if these belong to a newer job already, `word` is stale and the CAS below fails */
        fo_chunk_fn fn = atomic_load_explicit(&fo_pool.fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&fo_pool.ctx, memory_order_relaxed);
        if (front >= back)
            break;
        Py_ssize_t chunk = from_back ? back - 1 : front;
        uint64_t claimed = from_back ? word - 1 : word + (1 << 16);
        if (atomic_compare_exchange_weak_explicit(&fo_pool.claim, &word, claimed,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire)) {
            fn(ctx, chunk);
            atomic_fetch_add_explicit(&fo_pool.done, 1, memory_order_release);
            ran++;
        }
    }
    return ran;
}

/* The chunks of `job` not claimed yet. */
static Py_ssize_t fo_pool_unclaimed(uint32_t job) {
    uint64_t word = atomic_load_explicit(&fo_pool.claim, memory_order_acquire);
    Py_ssize_t front = (Py_ssize_t)(word >> 16 & 0xFFFF), back = (Py_ssize_t)(word & 0xFFFF);
    return (uint32_t)(word >> 32) == job && back > front ? back - front : 0;
}

static void *fo_helper_main(void *arg) {
    int index = (int)(intptr_t)arg;
    uint32_t seen = (uint32_t)(atomic_load(&fo_pool.claim) >> 32);
    for (;;) {
        uint32_t job;
        double deadline = fo_now() + FO_POLL_SECONDS;
        for (int polls = 1;; polls++) {
            job = (uint32_t)(atomic_load_explicit(&fo_pool.claim, memory_order_acquire) >> 32);
            if (job != seen)
                break;
            if (polls % 64 || fo_now() < deadline) {
                FO_CPU_RELAX();
                continue;
            }
            pthread_mutex_lock(&fo_pool.sleep_lock);
            atomic_fetch_add(&fo_pool.sleepers, 1);
            while ((uint32_t)(atomic_load(&fo_pool.claim) >> 32) == seen)
                pthread_cond_wait(&fo_pool.wake, &fo_pool.sleep_lock);
            atomic_fetch_sub(&fo_pool.sleepers, 1);
            pthread_mutex_unlock(&fo_pool.sleep_lock);
            deadline = fo_now() + FO_POLL_SECONDS;
        }
        seen = job;
        if (index < atomic_load_explicit(&fo_pool.helpers_wanted, memory_order_relaxed)) {
            fo_csr_take(atomic_load_explicit(&fo_pool.csr_control, memory_order_relaxed));
            fo_pool_work(job, 1, PY_SSIZE_T_MAX);
        }
    }
    return NULL;
}

/* Waking helpers that went to sleep (the calls are spaced out by other work, as a training
 * loop's steps are by its forward and backward passes) costs the caller a futex wake of
 * another CPU: on this 2-vCPU VM, 25-30 us (a wake followed by the job on the caller alone
 * took that much longer than the job alone), more than a helper that starts late saves on a
 * short job (Adam on 1e5 float32 elements after 1 ms of sleep: 79-95 us with the wake, 70-74
 * us on one thread). So a call that follows other work wakes them only for a job whose chunks
 * left take longer than FO_WAKE_WORTH wakes: judged by the last job's chunks when they say so,
 * else by timing one chunk of this job first (a stale estimate only ever wakes them, as
 * before). */
#define FO_WAKE_WORTH 4.0

static void fo_pool_wake_if_worth(uint32_t job, Py_ssize_t nchunks) {
    double worth = FO_WAKE_WORTH * fo_pool.wake_seconds;
    /* a call right after the last one (the first of a run of calls found the helpers asleep
     * and ran alone) wakes them whatever its length: they then poll through the calls that
     * follow, as they would have had they never slept */
    if (fo_now() - fo_pool.ended > FO_RUN_SECONDS
            && !(nchunks * fo_pool.chunk_seconds > worth)) {
        double t0 = fo_now();
        if (!fo_pool_work(job, 0, 1))
            return;
        if (!(fo_pool_unclaimed(job) * (fo_now() - t0) > worth))
            return;     /* the caller runs the rest alone, sooner than with a woken helper */
    }
    double t0 = fo_now();
    pthread_mutex_lock(&fo_pool.sleep_lock);
    pthread_cond_broadcast(&fo_pool.wake);
    pthread_mutex_unlock(&fo_pool.sleep_lock);
    /* the median of the last FO_WAKES wakes: neither a wake that met a preemption (a
     * millisecond, which would make every later job too short to wake for, and the estimate
     * moves only when they are woken) nor one that found the helper's CPU awake (a few us)
     * moves it */
    fo_pool.wakes[fo_pool.nwakes++ % FO_WAKES] = fo_now() - t0;
    int n = fo_pool.nwakes < FO_WAKES ? (int)fo_pool.nwakes : FO_WAKES;
    double sorted[FO_WAKES];
    for (int i = 0; i < n; i++) {           /* insertion sort of at most 8 */
        int j = i;
        for (double w = fo_pool.wakes[i]; j > 0 && sorted[j - 1] > w; j--)
            sorted[j] = sorted[j - 1];
        sorted[j] = fo_pool.wakes[i];
    }
    fo_pool.wake_seconds = sorted[n / 2];
}

static int fo_pool_forked;   /* this process is a fork() child: no OpenMP team (see the top) */

/* In a forked child only the forking thread exists: forget the parent's helpers. */
static void fo_pool_after_fork_child(void) {
    fo_pool_forked = 1;
    pthread_mutex_t unlocked = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t fresh = PTHREAD_COND_INITIALIZER;
    fo_pool.call_lock = unlocked;
    fo_pool.sleep_lock = unlocked;
    fo_pool.wake = fresh;
    atomic_store(&fo_pool.sleepers, 0);
    fo_pool.helpers = 0;
    fo_pool.avoided_cpu = -1;
}

/* Registered when the extension is loaded: a child must know it is one even when the parent
 * never started a helper (its OpenMP team may have run every job, or torch's alone may exist). */
__attribute__((constructor)) static void fo_pool_register_atfork(void) {
    if (!fo_pool.atfork_registered) {
        pthread_atfork(NULL, NULL, fo_pool_after_fork_child);
        fo_pool.atfork_registered = 1;
    }
}

static void fo_pool_start_helpers(int wanted) {
    if (wanted > FO_MAX_HELPERS)
        wanted = FO_MAX_HELPERS;
    while (fo_pool.helpers < wanted) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&thread, &attr, fo_helper_main,
                                    (void *)(intptr_t)fo_pool.helpers);
        pthread_attr_destroy(&attr);
        if (failed)
            return;   /* run with the helpers we have; the caller does the rest */
#ifdef __linux__
        pthread_setname_np(thread, "fastopt-helper");   /* as top -H and /proc show it */
#endif
        fo_pool.threads[fo_pool.helpers++] = thread;
        fo_pool.avoided_cpu = -1;   /* the new helper has the creating thread's affinity */
    }
}

/* Keep the helpers off the CPU the caller runs on (see the top of this file). One getcpu per
 * job (a vDSO call, tens of nanoseconds); the affinity is set again only when the caller moved. */
static void fo_pool_keep_helpers_off_caller_cpu(void) {
#ifdef __linux__
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu == fo_pool.avoided_cpu)
        return;
    fo_pool.avoided_cpu = cpu;
    cpu_set_t allowed;
    if (cpu >= CPU_SETSIZE
            || pthread_getaffinity_np(pthread_self(), sizeof allowed, &allowed) != 0)
        return;
    CPU_CLR(cpu, &allowed);
    if (CPU_COUNT(&allowed) == 0)
        return;   /* the caller may run on this CPU only: leave the helpers where they are */
    for (int i = 0; i < fo_pool.helpers; i++)
        pthread_setaffinity_np(fo_pool.threads[i], sizeof allowed, &allowed);
#endif
}

static _Thread_local int fo_pool_openmp;   /* this thread's long jobs run on its OpenMP team */
#define FO_POOL_OPENMP_MIN_CHUNKS 16        /* a long job (see the top of this file) */

static void fo_pool_run_openmp(fo_chunk_fn fn, void *ctx, Py_ssize_t nchunks, int nthreads) {
    _Atomic Py_ssize_t next = 0;
    unsigned control = fo_csr_control();
    #pragma omp parallel num_threads(nthreads)
    {
        unsigned own = fo_csr_take(control);    /* (the team is torch's: given back after) */
        for (Py_ssize_t c; (c = atomic_fetch_add_explicit(&next, 1, memory_order_relaxed))
                < nchunks;)
            fn(ctx, c);
        fo_csr_take(own);
    }
}

/* A job of more than FO_MAX_CHUNKS chunks: each claimed chunk is a group of `per` of them
 * (set under call_lock before the job is published, so helpers see it). */
static struct {
    fo_chunk_fn fn;
    void *ctx;
    Py_ssize_t per, nchunks;
} fo_pool_group;

static void fo_pool_run_group(void *unused, Py_ssize_t group) {
    (void)unused;
    Py_ssize_t end = (group + 1) * fo_pool_group.per;
    if (end > fo_pool_group.nchunks)
        end = fo_pool_group.nchunks;
    for (Py_ssize_t c = group * fo_pool_group.per; c < end; c++)
        fo_pool_group.fn(fo_pool_group.ctx, c);
}

/* Run fn(ctx, c) for every c in [0, nchunks) on up to `nthreads` threads, the caller being
 * one of them. Returns when every chunk has run. */
static void fo_pool_run(fo_chunk_fn fn, void *ctx, Py_ssize_t nchunks, int nthreads) {
#ifdef _OPENMP
    if (fo_pool_openmp && nthreads > 1 && nchunks >= FO_POOL_OPENMP_MIN_CHUNKS
            && !fo_pool_forked) {
        fo_pool_run_openmp(fn, ctx, nchunks, nthreads);
        return;
    }
#endif
    if (nthreads <= 1 || nchunks <= 1 || pthread_mutex_trylock(&fo_pool.call_lock) != 0) {
        for (Py_ssize_t c = 0; c < nchunks; c++)
            fn(ctx, c);
        return;
    }
    if (fo_pool.serial_calls > 0) {
        fo_pool.serial_calls--;
        pthread_mutex_unlock(&fo_pool.call_lock);
        for (Py_ssize_t c = 0; c < nchunks; c++)
            fn(ctx, c);
        return;
    }
    if (nchunks > FO_MAX_CHUNKS) {
        fo_pool_group.fn = fn;
        fo_pool_group.ctx = ctx;
        fo_pool_group.per = (nchunks + FO_MAX_CHUNKS - 1) / FO_MAX_CHUNKS;
        fo_pool_group.nchunks = nchunks;
        fn = fo_pool_run_group;
        nchunks = (nchunks + fo_pool_group.per - 1) / fo_pool_group.per;
    }
    fo_pool_start_helpers(nthreads - 1);
    fo_pool_keep_helpers_off_caller_cpu();
    double started = fo_now();
    uint32_t job = (uint32_t)(atomic_load(&fo_pool.claim) >> 32) + 1;
    atomic_store_explicit(&fo_pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&fo_pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&fo_pool.helpers_wanted, nthreads - 1, memory_order_relaxed);
    atomic_store_explicit(&fo_pool.csr_control, fo_csr_control(), memory_order_relaxed);
    atomic_store_explicit(&fo_pool.done, 0, memory_order_relaxed);
    atomic_store(&fo_pool.claim, (uint64_t)job << 32 | (uint64_t)nchunks);   /* publishes it */
    if (atomic_load(&fo_pool.sleepers) > 0)
        fo_pool_wake_if_worth(job, nchunks);
    double working = fo_now();
    Py_ssize_t mine = fo_pool_work(job, 0, PY_SSIZE_T_MAX);
    double worked = fo_now();
    if (mine > 0)
        fo_pool.chunk_seconds = (worked - working) / mine;
    /* every chunk is claimed; wait for the ones helpers are still running */
    for (unsigned polls = 1;
         atomic_load_explicit(&fo_pool.done, memory_order_acquire) < nchunks; polls++) {
        if (polls % 1024)
            FO_CPU_RELAX();
        else
            sched_yield();   /* a helper holding a chunk was preempted: let it run */
    }
    fo_pool.ended = fo_now();
    double waited = fo_pool.ended - worked;
    if (waited > worked - started) {
        fo_pool.serial_calls = fo_pool.backoff > 0 ? fo_pool.backoff : 1;
        fo_pool.backoff = fo_pool.serial_calls < 1024 ? 2 * fo_pool.serial_calls : 1024;
    } else {
        fo_pool.backoff /= 2;
    }
    pthread_mutex_unlock(&fo_pool.call_lock);
}

#endif
