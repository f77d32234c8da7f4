/* The engine's health, probed in the background: a thread of its own asks Docker GET /_ping every
 * health_probe_interval_ms, so Health answers on the loop from the latest result (never waiting on
 * a hung engine), and calls that need the engine can be refused at once while it is down instead
 * of each holding a worker thread for docker_timeout_ms. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server_internal.h"

struct moat_health {
    srv *s;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;                         /* under mu */
    char why[MOAT_STATUS_MESSAGE_MAX]; /* under mu: the last failure */
    atomic_int state;                  /* moat_engine_state */
    atomic_uint_fast64_t checked_ms;   /* monotonic time of the last answer or failure */
    int reported;                      /* loop: the state last logged */
    uv_async_t changed;
};

static uint64_t mono_ms(void)
{
    return moat_time_mono_ns() / 1000000u;
}

static void *probe_main(void *arg)
{
    moat_health *h = arg;
    const moat_server_config *cfg = &h->s->cfg;
    /* Long enough for a busy engine, short enough that a hung one shows within a few seconds. */
    long timeout_ms = (long)cfg->health_probe_interval_ms * 2;
    if (timeout_ms < 1000)
        timeout_ms = 1000;
    if (timeout_ms > (long)cfg->docker_timeout_ms)
        timeout_ms = (long)cfg->docker_timeout_ms;
    pthread_mutex_lock(&h->mu);
    while (!h->stop) {
        pthread_mutex_unlock(&h->mu);
        moat_status st;
        moat_status_clear(&st);
        bool up = h->s->rt_ops->ping(h->s->rt, timeout_ms, &st) == MOAT_CODE_OK;
        pthread_mutex_lock(&h->mu);
        if (!up)
            snprintf(h->why, sizeof(h->why), "%s", st.message);
        atomic_store(&h->checked_ms, mono_ms());
        int next = up ? MOAT_ENGINE_UP : MOAT_ENGINE_DOWN;
        if (atomic_exchange(&h->state, next) != next)
            uv_async_send(&h->changed);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        uint64_t ns = (uint64_t)until.tv_nsec + (uint64_t)cfg->health_probe_interval_ms * 1000000u;
        until.tv_sec += (time_t)(ns / 1000000000u);
        until.tv_nsec = (long)(ns % 1000000000u);
        while (!h->stop && pthread_cond_timedwait(&h->cv, &h->mu, &until) == 0) {
        }
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

static void on_changed(uv_async_t *a)
{
    moat_health *h = a->data;
    int state = atomic_load(&h->state);
    if (state == h->reported)
        return;
    h->reported = state;
    if (state == MOAT_ENGINE_DOWN) {
        char why[MOAT_STATUS_MESSAGE_MAX];
        pthread_mutex_lock(&h->mu);
        snprintf(why, sizeof(why), "%s", h->why);
        pthread_mutex_unlock(&h->mu);
        moat_log(MOAT_LOG_WARN, "docker_unreachable", "msg=\"%s\"", why);
    } else {
        moat_log(MOAT_LOG_INFO, "docker_reachable", "%s", "");
    }
    moat__engine_changed(h->s, state);
}

static void on_closed(uv_handle_t *handle)
{
    free(handle->data);
}

moat_health *moat__health_start(srv *s)
{
    moat_health *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->s = s;
    atomic_store(&h->state, MOAT_ENGINE_UNKNOWN);
    h->reported = MOAT_ENGINE_UNKNOWN;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    uv_async_init(s->loop, &h->changed, on_changed);
    h->changed.data = h;
    if (pthread_create(&h->thread, NULL, probe_main, h) != 0) {
        moat_log(MOAT_LOG_ERROR, "health_probe_failed", "%s", "error=\"pthread_create\"");
        uv_close((uv_handle_t *)&h->changed, on_closed);
        return NULL;
    }
    return h;
}

void moat__health_stop(moat_health *h)
{
    if (h == NULL)
        return;
    pthread_mutex_lock(&h->mu);
    h->stop = true;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->thread, NULL);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    uv_close((uv_handle_t *)&h->changed, on_closed);
}

moat_engine_state moat__health_state(moat_health *h, uint64_t *age_ms)
{
    if (h == NULL) {
        if (age_ms != NULL)
            *age_ms = 0;
        return MOAT_ENGINE_UNKNOWN;
    }
    if (age_ms != NULL) {
        uint64_t at = atomic_load(&h->checked_ms);
        uint64_t now = mono_ms();
        *age_ms = at != 0 && now > at ? now - at : 0;
    }
    return (moat_engine_state)atomic_load(&h->state);
}
