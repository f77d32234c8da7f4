/* Sessions the runtime's reaper ended, handed from its thread to the loop, where they leave the
 * session cache and their retained output goes back to the budget. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_place.h"
#include "handlers.h"

#define GONE_MAX 4096

struct gone_queue {
    uv_async_t wake; /* first: the handle's close callback frees the queue */
    srv *s;
    pthread_mutex_t mu;
    char ids[GONE_MAX][MOAT_UUID_STR_LEN]; /* under mu */
    size_t count;                          /* under mu */
    bool overflow; /* under mu: more than GONE_MAX, so the loop drops its whole cache */
};

static void on_wake(uv_async_t *a)
{
    gone_queue *q = (gone_queue *)a;
    srv *s = q->s;
    pthread_mutex_lock(&q->mu);
    if (q->overflow) {
        moat__session_cache_clear(s);
    } else {
        for (size_t i = 0; i < q->count; i++) {
            moat__session_cache_drop(s, q->ids[i]);
            moat_bridge_drop_scope(s->bridge, q->ids[i]);
        }
    }
    q->count = 0;
    q->overflow = false;
    pthread_mutex_unlock(&q->mu);
}

void moat__reaper_session_event(void *ctx, const char *event, const char *session_id,
                                moat_code code, uint64_t duration_ns)
{
    (void)duration_ns;
    (void)code;
    srv *s = ctx;
    if (strcmp(event, "expired") == 0 || strcmp(event, "gone") == 0 ||
        strcmp(event, "adopted") == 0)
        moat__metrics_reaper(s->metrics, event);
    if (strcmp(event, "expired") != 0 && strcmp(event, "gone") != 0)
        return;
    /* The owner reaps, and says so in the directory (here, on the reaper's thread). */
    moat__cluster_ended(s, session_id, strcmp(event, "expired") == 0 ? "ttl" : "gone");
    moat__metrics_session_delta(s->metrics, -1);
    gone_queue *q = s->gone;
    pthread_mutex_lock(&q->mu);
    if (q->count < GONE_MAX)
        snprintf(q->ids[q->count++], MOAT_UUID_STR_LEN, "%s", session_id);
    else
        q->overflow = true;
    pthread_mutex_unlock(&q->mu);
    uv_async_send(&q->wake);
}

moat_err moat__reaper_events_init(srv *s)
{
    gone_queue *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return MOAT_E_NOMEM;
    q->s = s;
    pthread_mutex_init(&q->mu, NULL);
    uv_async_init(s->loop, &q->wake, on_wake);
    s->gone = q;
    return MOAT_OK;
}

static void on_closed(uv_handle_t *h)
{
    gone_queue *q = (gone_queue *)h;
    pthread_mutex_destroy(&q->mu);
    free(q);
}

void moat__reaper_events_close(srv *s)
{
    if (s->gone == NULL)
        return;
    uv_close((uv_handle_t *)&s->gone->wake, on_closed);
    s->gone = NULL;
}
