/* A worker's unary call to another node (moat__peer_unary, cluster_peer.h): handed to the loop
 * through the pool's inbox, made there over the pool's connections, and waited for on the
 * call's own condition variable, which the loop signals once it is done with the call. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_peer.h"

typedef struct unary unary;

/* Workers' calls not yet taken by the loop. */
struct peer_inbox {
    srv *s;
    uv_async_t async; /* a worker queued a call */
    pthread_mutex_t mu;
    unary *head; /* under mu */
};

struct unary {
    /* The worker's, read on the loop. */
    const char *address, *method;
    moat_slice request;
    uint64_t timeout_ms, deadline_at;
    /* The loop's until done. */
    peer_inbox *in;
    peer_call *call;
    uv_timer_t timer; /* PEER_CONNECT_MS to start, then the deadline */
    bool finished, oom;
    moat_code code;
    moat_status *st;
    uint8_t *resp;
    size_t resp_len;
    /* Under the inbox's mu: the loop is done with it, and the worker may read and go. */
    bool done;
    pthread_cond_t cv;
    unary *next;
};

static void unary_fail(unary *u, const char *why)
{
    moat_status_set(u->st, MOAT_CODE_UNAVAILABLE, "peer_unavailable",
                    "node %s could not be reached for %s: %s", u->address, u->method, why);
    moat_status_add_detail(u->st, "owner_address", u->address);
    u->code = MOAT_CODE_UNAVAILABLE;
}

static void unary_done(unary *u)
{
    pthread_mutex_lock(&u->in->mu);
    u->done = true;
    pthread_cond_signal(&u->cv);
    pthread_mutex_unlock(&u->in->mu);
}

static void on_unary_timer_closed(uv_handle_t *h)
{
    unary_done(h->data);
}

/* Records the outcome once, and lets the worker go once the timer has closed. */
static void unary_finish(unary *u, const moat_status *end, const char *failed)
{
    if (u->finished)
        return;
    u->finished = true;
    if (u->call != NULL && failed != NULL)
        moat__peer_call_cancel(u->call, failed);
    u->call = NULL;
    if (end == NULL) {
        unary_fail(u, failed);
    } else if (u->oom) {
        moat_status_set(u->st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        u->code = MOAT_CODE_RESOURCE_EXHAUSTED;
    } else {
        *u->st = *end;
        u->code = end->code;
    }
    if (u->code != MOAT_CODE_OK) {
        free(u->resp);
        u->resp = NULL;
        u->resp_len = 0;
    }
    uv_close((uv_handle_t *)&u->timer, on_unary_timer_closed);
}

/* At PEER_CONNECT_MS the peer must have taken the call (a pooled connection to a stuck node
 * takes it in the kernel alone: the Pong says its loop read it); then the deadline. */
static void on_unary_timer(uv_timer_t *t)
{
    unary *u = t->data;
    uint64_t now = moat__now_ms();
    if (u->call != NULL && now < u->deadline_at && moat__peer_call_heard(u->call)) {
        uv_timer_start(&u->timer, on_unary_timer, u->deadline_at - now, 0);
        return;
    }
    unary_finish(u, NULL,
                 now < u->deadline_at ? "it did not take the call in time"
                                      : "no answer before the deadline");
}

static void unary_started(peer_call *c, void *ud, uint32_t window)
{
    (void)c;
    (void)ud;
    (void)window;
}

static void unary_message(peer_call *c, void *ud, moat_slice payload)
{
    (void)c;
    unary *u = ud;
    if (u->resp != NULL || u->oom)
        return;
    u->resp = malloc(payload.len + 1);
    u->oom = u->resp == NULL;
    if (u->resp != NULL && payload.len > 0)
        memcpy(u->resp, payload.data, payload.len);
    u->resp_len = payload.len;
}

static void unary_window(peer_call *c, void *ud, uint32_t increment)
{
    (void)c;
    (void)ud;
    (void)increment;
}

static void unary_ended(peer_call *c, void *ud, const moat_status *end, const char *failed)
{
    (void)c;
    unary *u = ud;
    u->call = NULL;
    unary_finish(u, end, failed);
}

static const peer_call_ops unary_ops = {unary_started, unary_message, unary_window, unary_ended};

static void unary_begin(peer_inbox *in, unary *u)
{
    u->in = in;
    uv_timer_init(in->s->loop, &u->timer);
    u->timer.data = u;
    /* A node that is alive but stuck (stopped, swapping, its loop blocked) accepts connections
     * in its kernel and answers nothing: the call gets a few seconds of its deadline to be
     * taken, so such a node is passed over at once rather than at the deadline. */
    uint64_t connect_ms = u->timeout_ms < PEER_CONNECT_MS ? u->timeout_ms : PEER_CONNECT_MS;
    uv_timer_start(&u->timer, on_unary_timer, connect_ms, 0);
    u->call = moat__peer_call_open(in->s, u->address, u->method, u->request, u->deadline_at,
                                   &unary_ops, u);
    if (u->call == NULL)
        unary_finish(u, NULL, "the call could not be opened");
}

static void on_async(uv_async_t *a)
{
    peer_inbox *in = a->data;
    pthread_mutex_lock(&in->mu);
    unary *u = in->head;
    in->head = NULL;
    pthread_mutex_unlock(&in->mu);
    while (u != NULL) {
        unary *next = u->next;
        unary_begin(in, u);
        u = next;
    }
}

moat_code moat__peer_unary(srv *s, const char *address, const char *method, moat_slice request,
                           uint64_t timeout_ms, uint8_t **response, size_t *response_len,
                           moat_status *st)
{
    peer_inbox *in = moat__peers_inbox(s);
    unary u = {.address = address, .method = method, .request = request, .st = st};
    u.timeout_ms = timeout_ms;
    u.deadline_at = moat__now_ms() + timeout_ms;
    *response = NULL;
    *response_len = 0;
    if (in == NULL) {
        unary_fail(&u, "this node is not in a cluster");
        return u.code;
    }
    pthread_cond_init(&u.cv, NULL);
    pthread_mutex_lock(&in->mu);
    u.next = in->head;
    in->head = &u;
    pthread_mutex_unlock(&in->mu);
    uv_async_send(&in->async);
    /* The loop always finishes it: the timer bounds it, and the pool is closed only once no
     * job runs. */
    pthread_mutex_lock(&in->mu);
    while (!u.done)
        pthread_cond_wait(&u.cv, &in->mu);
    pthread_mutex_unlock(&in->mu);
    pthread_cond_destroy(&u.cv);
    *response = u.resp;
    *response_len = u.resp_len;
    return u.code;
}

peer_inbox *moat__peer_inbox_new(srv *s)
{
    peer_inbox *in = calloc(1, sizeof(*in));
    if (in == NULL)
        return NULL;
    in->s = s;
    pthread_mutex_init(&in->mu, NULL);
    uv_async_init(s->loop, &in->async, on_async);
    in->async.data = in;
    /* It keeps the loop alive no more than a connection would. */
    uv_unref((uv_handle_t *)&in->async);
    return in;
}

static void on_inbox_closed(uv_handle_t *h)
{
    peer_inbox *in = h->data;
    pthread_mutex_destroy(&in->mu);
    free(in);
}

void moat__peer_inbox_close(peer_inbox *in)
{
    uv_close((uv_handle_t *)&in->async, on_inbox_closed);
}
