/* The libuv adapter: one uv_poll_t per socket curl watches, one uv_timer_t
 * for curl's timeout, and a 1 s timer that drops executions whose retention
 * ended. Handles close asynchronously and are freed in their close callbacks,
 * so the adapter can outlive the bridge by one loop iteration. */
#include "internal.h"

#include <stdlib.h>
#include <uv.h>

typedef struct uv_sock {
    uv_poll_t poll;
    int fd;
    struct uv_adapter *a;
    struct uv_sock *next;
} uv_sock;

typedef struct uv_adapter {
    moat_bridge *b; /* NULL once the bridge is gone */
    uv_loop_t *loop;
    uv_timer_t timer;
    uv_timer_t sweep;
    uv_sock *socks;
    int open_handles;
} uv_adapter;

static void adapter_closed(uv_handle_t *h)
{
    uv_adapter *a = h->data;
    if (--a->open_handles == 0)
        free(a);
}

static void sock_closed(uv_handle_t *h)
{
    uv_sock *s = h->data;
    uv_adapter *a = s->a;
    free(s);
    if (--a->open_handles == 0)
        free(a);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    uv_sock *s = p->data;
    moat_bridge *b = s->a->b;
    if (b == NULL)
        return;
    int mask = 0;
    if (status < 0)
        mask = MOAT_BRIDGE_POLL_IN | MOAT_BRIDGE_POLL_OUT; /* let curl find the error */
    if (events & UV_READABLE)
        mask |= MOAT_BRIDGE_POLL_IN;
    if (events & UV_WRITABLE)
        mask |= MOAT_BRIDGE_POLL_OUT;
    moat_bridge_socket_action(b, s->fd, mask);
}

static void on_timer(uv_timer_t *t)
{
    uv_adapter *a = t->data;
    if (a->b != NULL)
        moat_bridge_timeout(a->b);
}

static void on_sweep(uv_timer_t *t)
{
    uv_adapter *a = t->data;
    if (a->b != NULL) {
        moat__exec_sweep(a->b, true);
        moat__terminal_sweep(a->b);
    }
}

static void close_sock(uv_adapter *a, uv_sock *s)
{
    uv_sock **pp = &a->socks;
    while (*pp != s)
        pp = &(*pp)->next;
    *pp = s->next;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

static void sock_fn(void *ud, int fd, int what)
{
    uv_adapter *a = ud;
    uv_sock *s = a->socks;
    while (s != NULL && s->fd != fd)
        s = s->next;
    if (what & MOAT_BRIDGE_POLL_REMOVE) {
        if (s != NULL)
            close_sock(a, s);
        return;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL)
            return;
        if (uv_poll_init_socket(a->loop, &s->poll, fd) != 0) {
            free(s);
            return;
        }
        s->fd = fd;
        s->a = a;
        s->poll.data = s;
        s->next = a->socks;
        a->socks = s;
        a->open_handles++;
    }
    int ev = 0;
    if (what & MOAT_BRIDGE_POLL_IN)
        ev |= UV_READABLE;
    if (what & MOAT_BRIDGE_POLL_OUT)
        ev |= UV_WRITABLE;
    uv_poll_start(&s->poll, ev, on_poll);
}

static void timer_fn(void *ud, long timeout_ms)
{
    uv_adapter *a = ud;
    if (timeout_ms < 0)
        uv_timer_stop(&a->timer);
    else
        uv_timer_start(&a->timer, on_timer, (uint64_t)timeout_ms, 0);
}

moat_err moat__uv_set(moat_bridge *b, struct uv_loop_s *loop)
{
    if (b->uv != NULL || loop == NULL)
        return MOAT_E_STATE;
    uv_adapter *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return MOAT_E_NOMEM;
    a->b = b;
    a->loop = loop;
    uv_timer_init(loop, &a->timer);
    uv_timer_init(loop, &a->sweep);
    a->timer.data = a;
    a->sweep.data = a;
    a->open_handles = 2;
    uv_timer_start(&a->sweep, on_sweep, 1000, 1000);
    /* the sweep timer alone must not keep a loop alive */
    uv_unref((uv_handle_t *)&a->sweep);
    b->uv = a;
    moat_bridge_set_loop(b, sock_fn, timer_fn, a);
    return MOAT_OK;
}

void moat__uv_release(moat_bridge *b)
{
    uv_adapter *a = b->uv;
    if (a == NULL)
        return;
    b->uv = NULL;
    a->b = NULL;
    while (a->socks != NULL)
        close_sock(a, a->socks);
    uv_timer_stop(&a->timer);
    uv_timer_stop(&a->sweep);
    uv_close((uv_handle_t *)&a->timer, adapter_closed);
    uv_close((uv_handle_t *)&a->sweep, adapter_closed);
}
