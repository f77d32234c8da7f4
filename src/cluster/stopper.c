/* A pause that a stop cuts short (stopper.h). */
#include <time.h>

#include "cluster/stopper.h"

void moat__stopper_init(moat_stopper *s)
{
    atomic_init(&s->stop, false);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
}

void moat__stopper_destroy(moat_stopper *s)
{
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->mu);
}

bool moat__stopper_wait_ms(moat_stopper *s, int64_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->mu);
    while (!atomic_load(&s->stop) && pthread_cond_timedwait(&s->cond, &s->mu, &until) == 0) {
    }
    pthread_mutex_unlock(&s->mu);
    return !atomic_load(&s->stop);
}

void moat__stopper_stop(moat_stopper *s)
{
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->stop, true);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
}
