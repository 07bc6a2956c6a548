/* clockshift: an LD_PRELOAD library that moves the wall clock (CLOCK_REALTIME) of a process tree
 * by a fixed number of seconds and leaves every other clock alone.
 *
 * Why not libfaketime: in Debian's 0.9.10 either the monotonic clock is faked too, and then
 * CPython's timed lock waits (sem_clockwait on CLOCK_MONOTONIC, which libfaketime does not
 * wrap) never wake, or it is not, and then its clock_nanosleep wrapper answers EINVAL to
 * CPython's time.sleep. Here only the wall clock moves, so sleeps, timeouts and timers behave as
 * on the real machine, while time.time(), datetime.now() and PostgreSQL's now() all read the
 * moved date. Absolute waits on CLOCK_REALTIME are moved back by the same offset.
 *
 * CLOCKSHIFT_SECONDS=<integer, may be negative> sets the offset (tools/test-at computes it).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long shift_seconds(void) {
    static int loaded = 0;
    static long long value = 0;
    if (!loaded) {
        const char *raw = getenv("CLOCKSHIFT_SECONDS");
        value = raw ? strtoll(raw, NULL, 10) : 0;
        loaded = 1;
    }
    return value;
}

static int is_wall_clock(clockid_t id) {
    return id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE || id == CLOCK_TAI;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *) = NULL;
    if (!real) real = dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    if (rc == 0 && is_wall_clock(id)) ts->tv_sec += shift_seconds();
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    static int (*real)(struct timeval *restrict, void *restrict) = NULL;
    if (!real) real = dlsym(RTLD_NEXT, "gettimeofday");
    int rc = real(tv, tz);
    if (rc == 0) tv->tv_sec += shift_seconds();
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}

/* Absolute deadlines computed from the moved wall clock, handed back to the kernel's. */
int clock_nanosleep(clockid_t id, int flags, const struct timespec *req, struct timespec *rem) {
    static int (*real)(clockid_t, int, const struct timespec *, struct timespec *) = NULL;
    if (!real) real = dlsym(RTLD_NEXT, "clock_nanosleep");
    if ((flags & TIMER_ABSTIME) && is_wall_clock(id)) {
        struct timespec moved = *req;
        moved.tv_sec -= shift_seconds();
        return real(id, flags, &moved, rem);
    }
    return real(id, flags, req, rem);
}

int sem_timedwait(sem_t *restrict sem, const struct timespec *restrict deadline) {
    static int (*real)(sem_t *restrict, const struct timespec *restrict) = NULL;
    if (!real) real = dlsym(RTLD_NEXT, "sem_timedwait");
    struct timespec moved = *deadline;
    moved.tv_sec -= shift_seconds();
    return real(sem, &moved);
}
