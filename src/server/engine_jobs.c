/* Jobs on libuv's thread pool for calls that need the engine (the runtime's functions block).
 * While the engine is down, new ones are refused at once and the calls of running ones end, so
 * no call waits docker_timeout_ms for a worker. */
#include <stdlib.h>

#include "handlers.h"

static void job_work(uv_work_t *r)
{
    engine_job *j = r->data;
    moat_status_clear(&j->status);
    j->run(j);
}

static void waiting_unlink(engine_job *j)
{
    if (j->st == NULL)
        return;
    if (j->prev != NULL)
        j->prev->next = j->next;
    else
        j->s->engine_jobs = j->next;
    if (j->next != NULL)
        j->next->prev = j->prev;
}

static void job_after(uv_work_t *r, int status)
{
    (void)status;
    engine_job *j = r->data;
    waiting_unlink(j);
    j->done(j);
    if (j->st != NULL)
        moat__stream_unref(j->st);
    moat__srv_job(j->s, -1);
    free(j);
}

static void fail_engine_down(stream *st, uint64_t age_ms)
{
    moat_rpc_call_fail(st->call, MOAT_CODE_UNAVAILABLE, "docker_unreachable",
                       "the docker engine did not answer its health probe %llu ms ago",
                       (unsigned long long)age_ms);
}

void *moat__job_new_unattached(srv *s, size_t size)
{
    engine_job *j = calloc(1, size);
    if (j == NULL)
        return NULL;
    j->s = s;
    j->started_ns = moat_time_mono_ns();
    return j;
}

/* A job for st's call, or NULL with the call ended out_of_memory. */
static engine_job *job_for(stream *st, size_t size)
{
    engine_job *j = moat__job_new_unattached(st->s, size);
    if (j == NULL) {
        moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return NULL;
    }
    j->st = st;
    return j;
}

void *moat__job_new(stream *st, size_t size)
{
    uint64_t age_ms;
    if (moat__health_state(st->s->health, &age_ms) == MOAT_ENGINE_DOWN) {
        fail_engine_down(st, age_ms);
        return NULL;
    }
    return job_for(st, size);
}

void *moat__job_new_routed(stream *st, size_t size)
{
    uint64_t age_ms;
    if (moat__cluster_etcd(st->s) == NULL ||
        moat__health_state(st->s->health, &age_ms) != MOAT_ENGINE_DOWN)
        return moat__job_new(st, size);
    engine_job *j = job_for(st, size);
    if (j == NULL)
        return NULL;
    j->engine_down = true;
    moat_status_set(&j->engine_status, MOAT_CODE_UNAVAILABLE, "docker_unreachable",
                    "the docker engine did not answer its health probe %llu ms ago",
                    (unsigned long long)age_ms);
    return j;
}

void moat__job_start(engine_job *j, engine_job_fn run, engine_job_fn done)
{
    j->run = run;
    j->done = done;
    j->req.data = j;
    if (j->st != NULL) {
        moat__stream_ref(j->st);
        j->prev = NULL;
        j->next = j->s->engine_jobs;
        if (j->next != NULL)
            j->next->prev = j;
        j->s->engine_jobs = j;
    }
    moat__srv_job(j->s, 1);
    uv_queue_work(j->s->loop, &j->req, job_work, job_after);
}

void moat__engine_changed(srv *s, int state)
{
    moat__grpc_health_changed(s);
    if (state != MOAT_ENGINE_DOWN)
        return;
    /* Their workers stay blocked until docker_timeout_ms; the calls need not. A job's after-work
     * callback finds its call ended and drops the late result. */
    uint64_t age_ms;
    moat__health_state(s->health, &age_ms);
    for (engine_job *j = s->engine_jobs; j != NULL; j = j->next) {
        if (moat__running(j->st))
            fail_engine_down(j->st, age_ms);
    }
}
