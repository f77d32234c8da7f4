/* grpc.health.v1.Health, the health service load balancers and Kubernetes probes call: SERVING
 * while the engine answers and moatd is not draining. Check answers once; Watch sends the status
 * and then every change, until the call is cancelled or moatd drains. Loop thread only. */
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "handlers.h"

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus serving_status;

/* The services a probe may name: "" is the server as a whole. */
static bool known_service(const char *name)
{
    static const char *const names[] = {"",
                                        "moat.v1.Sandboxes",
                                        "moat.v1.Exec",
                                        "moat.v1.Files",
                                        "moat.v1.Health",
                                        "grpc.health.v1.Health"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(name, names[i]) == 0)
            return true;
    return false;
}

static serving_status current_status(srv *s)
{
    return moat__health_state(s->health, NULL) == MOAT_ENGINE_UP && !s->draining
               ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
               : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

static moat_err send_status(stream *st, serving_status status)
{
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = status;
    return moat_rpc_call_send(st->call, &resp.base);
}

void moat__grpc_health_check(stream *st, const ProtobufCMessage *req)
{
    const Grpc__Health__V1__HealthCheckRequest *r =
        (const Grpc__Health__V1__HealthCheckRequest *)req;
    if (!known_service(r->service)) {
        moat_status status;
        moat_status_set(&status, MOAT_CODE_NOT_FOUND, "unknown_service",
                        "no service \"%.100s\" here", r->service);
        moat_rpc_call_end(st->call, &status);
        return;
    }
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = current_status(st->s);
    moat_rpc_call_reply(st->call, &resp.base);
}

/* A Watch in progress: on the server's list until its call ends. */
typedef struct health_watch {
    stream *st;
    serving_status last;
    struct health_watch *next, *prev;
} health_watch;

static void watch_free(health_watch *w)
{
    srv *s = w->st->s;
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        s->health_watches = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    moat__stream_unref(w->st);
    free(w);
}

static void watch_on_cancel(moat_rpc_call *call, const moat_status *why, void *arg)
{
    (void)call;
    (void)why;
    watch_free(arg);
}

void moat__grpc_health_watch(stream *st, const ProtobufCMessage *req)
{
    const Grpc__Health__V1__HealthCheckRequest *r =
        (const Grpc__Health__V1__HealthCheckRequest *)req;
    health_watch *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return;
    }
    /* An unknown service is SERVICE_UNKNOWN, and the watch goes on, as the protocol asks: the
     * service may appear. moatd's never do, so it stays so. */
    w->last = known_service(r->service)
                  ? current_status(st->s)
                  : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    if (send_status(st, w->last) != MOAT_OK) {
        free(w);
        moat_rpc_call_fail(st->call, MOAT_CODE_INTERNAL, "send_failed", "cannot send the status");
        return;
    }
    w->st = st;
    moat__stream_ref(st);
    w->next = st->s->health_watches;
    if (w->next != NULL)
        w->next->prev = w;
    st->s->health_watches = w;
    moat_rpc_call_on_cancel(st->call, watch_on_cancel, w);
}

void moat__grpc_health_changed(srv *s)
{
    health_watch *w = s->health_watches;
    while (w != NULL) {
        health_watch *next = w->next;
        serving_status now = current_status(s);
        if (w->last != GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN &&
            now != w->last) {
            w->last = now;
            send_status(w->st, now);
        }
        if (s->draining) {
            /* The last status has gone out: the watch ends, so the drain need not wait. */
            moat_rpc_call_on_cancel(w->st->call, NULL, NULL);
            moat_status ok;
            moat_status_clear(&ok);
            moat_rpc_call_end(w->st->call, &ok);
            watch_free(w);
        }
        w = next;
    }
}
