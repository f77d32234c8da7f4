/* Docker event watcher and the list cache it keeps coherent. Docker's own container list costs
 * tens of milliseconds for a few hundred containers; the event stream tells us exactly when a
 * snapshot can no longer be trusted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "internal.h"

/* A missed snapshot's Docker list and its outcome, kept until the last caller that joined it
 * has copied that (refs). */
struct moat__list_flight {
    uint64_t gen; /* cache_gen when it began */
    size_t refs;  /* the lead and the callers waiting */
    bool done;
    moat_code code;
    moat_status status;
    moat_session *sessions; /* owned */
    size_t count;
};

void moat__cache_init(moat_runtime *rt)
{
    pthread_mutex_init(&rt->cache_mu, NULL);
    pthread_cond_init(&rt->list_done, NULL);
    rt->cache_gen = 1;
}

void moat__cache_destroy(moat_runtime *rt)
{
    free(rt->cache);
    rt->cache = NULL;
    pthread_cond_destroy(&rt->list_done);
    pthread_mutex_destroy(&rt->cache_mu);
}

void moat__cache_invalidate(moat_runtime *rt)
{
    pthread_mutex_lock(&rt->cache_mu);
    rt->cache_gen++;
    rt->cache_valid = false;
    pthread_mutex_unlock(&rt->cache_mu);
}

/* Under cache_mu: a copy of count sessions into *out (NULL for none); false when out of
 * memory. */
static bool copy_sessions(const moat_session *from, size_t count, moat_session **out)
{
    *out = NULL;
    if (count == 0)
        return true;
    *out = malloc(count * sizeof(moat_session));
    if (*out == NULL)
        return false;
    memcpy(*out, from, count * sizeof(moat_session));
    return true;
}

static void flight_unref(moat__list_flight *f)
{
    if (--f->refs > 0)
        return;
    free(f->sessions);
    free(f);
}

bool moat__cache_get(moat_runtime *rt, moat_session **out, size_t *count, uint64_t *gen)
{
    bool hit = false;
    pthread_mutex_lock(&rt->cache_mu);
    *gen = rt->watch_connected ? rt->cache_gen : 0;
    if (rt->watch_connected && rt->cache_valid && rt->cache_snapshot_gen == rt->cache_gen) {
        hit = copy_sessions(rt->cache, rt->cache_count, out);
        if (hit)
            *count = rt->cache_count;
    }
    pthread_mutex_unlock(&rt->cache_mu);
    return hit;
}

bool moat__list_join(moat_runtime *rt, moat__list_flight **lead, moat_code *code,
                     moat_session **out, size_t *count, moat_status *st)
{
    *lead = NULL;
    pthread_mutex_lock(&rt->cache_mu);
    moat__list_flight *f = rt->list_flight;
    /* Watcher or not, every change moatd makes moves the generation on: a list begun before
     * one is not this caller's answer. */
    if (f == NULL || f->gen != rt->cache_gen) {
        f = calloc(1, sizeof(*f));
        if (f != NULL) {
            f->gen = rt->cache_gen;
            f->refs = 1;
            rt->list_flight = f;
        }
        pthread_mutex_unlock(&rt->cache_mu);
        *lead = f; /* NULL: out of memory, the caller lists alone */
        return false;
    }
    f->refs++;
    rt->list_joined++;
    while (!f->done)
        pthread_cond_wait(&rt->list_done, &rt->cache_mu);
    *code = f->code;
    *st = f->status;
    *count = 0;
    *out = NULL;
    if (f->code == MOAT_CODE_OK) {
        if (copy_sessions(f->sessions, f->count, out)) {
            *count = f->count;
        } else {
            moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
            *code = st->code;
        }
    }
    flight_unref(f);
    pthread_mutex_unlock(&rt->cache_mu);
    return true;
}

void moat__list_end(moat_runtime *rt, moat__list_flight *f, moat_code code, const moat_status *st,
                    const moat_session *sessions, size_t count)
{
    if (f == NULL)
        return;
    pthread_mutex_lock(&rt->cache_mu);
    f->done = true;
    f->code = code;
    f->status = *st;
    if (code == MOAT_CODE_OK && copy_sessions(sessions, count, &f->sessions)) {
        f->count = count;
    } else if (code == MOAT_CODE_OK) {
        moat_status_set(&f->status, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        f->code = f->status.code;
    }
    if (rt->list_flight == f)
        rt->list_flight = NULL;
    pthread_cond_broadcast(&rt->list_done);
    flight_unref(f);
    pthread_mutex_unlock(&rt->cache_mu);
}

void moat__cache_put(moat_runtime *rt, uint64_t gen, const moat_session *sessions, size_t count)
{
    if (gen == 0)
        return;
    moat_session *copy = NULL;
    if (count > 0) {
        copy = malloc(count * sizeof(moat_session));
        if (copy == NULL)
            return;
        memcpy(copy, sessions, count * sizeof(moat_session));
    }
    pthread_mutex_lock(&rt->cache_mu);
    if (rt->watch_connected && rt->cache_gen == gen) {
        free(rt->cache);
        rt->cache = copy;
        rt->cache_count = count;
        rt->cache_snapshot_gen = gen;
        rt->cache_valid = true;
        copy = NULL;
    }
    pthread_mutex_unlock(&rt->cache_mu);
    free(copy);
}

/* Under cache_mu: moves the generation on. True when the snapshot was usable: it stays so at the
 * new generation, and the caller makes the change to it; false leaves it invalid. */
static bool cache_bump(moat_runtime *rt)
{
    bool usable = rt->watch_connected && rt->cache_valid && rt->cache_snapshot_gen == rt->cache_gen;
    rt->cache_gen++;
    if (usable)
        rt->cache_snapshot_gen = rt->cache_gen;
    else
        rt->cache_valid = false;
    return usable;
}

static bool seen_dead(const moat_runtime *rt, const char *container_id)
{
    for (size_t i = 0; i < sizeof(rt->cache_dead) / sizeof(rt->cache_dead[0]); i++)
        if (strcmp(rt->cache_dead[i], container_id) == 0)
            return true;
    return false;
}

void moat__cache_add(moat_runtime *rt, const moat_session *session)
{
    pthread_mutex_lock(&rt->cache_mu);
    bool usable = cache_bump(rt) && !seen_dead(rt, session->container_id);
    moat_session *grown =
        usable ? realloc(rt->cache, (rt->cache_count + 1) * sizeof(*rt->cache)) : NULL;
    if (grown != NULL) {
        rt->cache = grown;
        rt->cache[rt->cache_count++] = *session;
    } else {
        rt->cache_valid = false;
    }
    pthread_mutex_unlock(&rt->cache_mu);
}

void moat__cache_forget(moat_runtime *rt, const char *session_id, const char *container_id)
{
    pthread_mutex_lock(&rt->cache_mu);
    if (cache_bump(rt)) {
        size_t kept = 0;
        for (size_t i = 0; i < rt->cache_count; i++) {
            const moat_session *s = &rt->cache[i];
            if ((session_id == NULL || strcmp(s->session_id, session_id) != 0) &&
                (container_id == NULL || strcmp(s->container_id, container_id) != 0))
                rt->cache[kept++] = *s;
        }
        rt->cache_count = kept;
    }
    pthread_mutex_unlock(&rt->cache_mu);
}

/* A container died: out of the snapshot, and remembered for moat__cache_add. */
static void cache_dead(moat_runtime *rt, const char *container_id)
{
    pthread_mutex_lock(&rt->cache_mu);
    size_t n = sizeof(rt->cache_dead) / sizeof(rt->cache_dead[0]);
    snprintf(rt->cache_dead[rt->cache_dead_next++ % n], MOAT_CONTAINER_ID_MAX, "%s", container_id);
    pthread_mutex_unlock(&rt->cache_mu);
    moat__cache_forget(rt, NULL, container_id);
}

static void set_connected(moat_runtime *rt, bool connected)
{
    pthread_mutex_lock(&rt->cache_mu);
    rt->watch_connected = connected;
    rt->cache_gen++;
    rt->cache_valid = false;
    pthread_mutex_unlock(&rt->cache_mu);
}

/* The engine answers again after it was lost: the reaper reconciles now, not a whole
 * cleanup interval later, so the sessions a restarted engine stopped come back promptly. */
static void wake_pending_reconcile(moat_runtime *rt)
{
    pthread_mutex_lock(&rt->reaper_mu);
    if (rt->reconcile_pending) {
        rt->reaper_kick = true;
        pthread_cond_broadcast(&rt->reaper_cv);
    }
    pthread_mutex_unlock(&rt->reaper_mu);
}

/* An event stream's partial line: events are JSON objects, one per line, in chunks of any size. */
#define EVENT_LINE_MAX 65536

typedef struct watch_conn {
    moat_runtime *rt;
    long status;
    char *line;
    size_t len;
} watch_conn;

static size_t on_header(char *data, size_t size, size_t nmemb, void *user)
{
    watch_conn *wc = user;
    size_t n = size * nmemb;
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        const char *sp = memchr(data, ' ', n);
        wc->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    } else if ((n == 2 && data[0] == '\r') || (n == 1 && data[0] == '\n')) {
        /* End of headers: Docker has subscribed us before it sends them. */
        if (wc->status == 200) {
            set_connected(wc->rt, true);
            wake_pending_reconcile(wc->rt);
        }
    }
    return n;
}

/* What one event does to the snapshot of running sessions. A death takes its container out; a
 * create, or a kill, stop or exec that is no death, changes nothing listed; neither does the
 * start of a pool slot no claim has made a session (a claim adds its session itself). Anything
 * else, or an event that does not parse, invalidates. timeNano (past 2^53, not exact as a cJSON
 * double) is never read. */
static void apply_event(moat_runtime *rt, const char *text, size_t len)
{
    cJSON *ev = cJSON_ParseWithLength(text, len);
    const char *action = moat__json_str(ev, "Action");
    const cJSON *actor = moat__json_get(ev, "Actor");
    const char *id = moat__json_str(actor, "ID");
    const cJSON *attrs = moat__json_get(actor, "Attributes");
    const char *pool = moat__json_str(attrs, LABEL_POOL);
    const char *session_id = moat__json_str(attrs, LABEL_SESSION);
    if (action == NULL || id == NULL) {
        moat__cache_invalidate(rt);
    } else if (strcmp(action, "die") == 0 || strcmp(action, "destroy") == 0) {
        cache_dead(rt, id);
    } else if (strcmp(action, "create") == 0 || strcmp(action, "kill") == 0 ||
               strcmp(action, "stop") == 0 || strncmp(action, "exec_", 5) == 0) {
        /* nothing listed changes */
    } else if (!(strcmp(action, "start") == 0 && pool != NULL && strcmp(pool, "true") == 0 &&
                 session_id != NULL && !moat__store_has(rt->store, session_id))) {
        moat__cache_invalidate(rt);
    }
    cJSON_Delete(ev);
}

static size_t on_event(char *data, size_t size, size_t nmemb, void *user)
{
    watch_conn *wc = user;
    size_t n = size * nmemb;
    if (wc->status != 200)
        return n;
    for (size_t i = 0; i < n; i++) {
        if (data[i] == '\n') {
            if (wc->len > 0)
                apply_event(wc->rt, wc->line, wc->len);
            wc->len = 0;
        } else if (wc->len < EVENT_LINE_MAX) {
            wc->line[wc->len++] = data[i];
        } else {
            /* Longer than any event: whatever it was, the snapshot is not trusted. */
            moat__cache_invalidate(wc->rt);
        }
    }
    return n;
}

static bool should_stop(moat_runtime *rt)
{
    pthread_mutex_lock(&rt->reaper_mu);
    bool stop = rt->watch_stop;
    pthread_mutex_unlock(&rt->reaper_mu);
    return stop;
}

/* One event-stream connection, until it ends or we are told to stop. */
static void follow_events(moat_runtime *rt, CURLM *multi, const char *url)
{
    watch_conn wc = {rt, 0, malloc(EVENT_LINE_MAX), 0};
    CURL *h = wc.line != NULL ? curl_easy_init() : NULL;
    if (h == NULL) {
        free(wc.line);
        return;
    }
    moat__docker_setup_endpoint(rt, h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, rt->cfg.docker_timeout_ms);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &wc);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_event);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &wc);
    curl_multi_add_handle(multi, h);
    int running = 1;
    while (running && !should_stop(rt)) {
        if (curl_multi_perform(multi, &running) != CURLM_OK)
            break;
        if (running)
            curl_multi_poll(multi, NULL, 0, 1000, NULL);
    }
    curl_multi_remove_handle(multi, h);
    curl_easy_cleanup(h);
    free(wc.line);
    set_connected(rt, false);
    /* Docker ends the stream only when it shuts down (or the connection breaks): either way
     * its sandboxes may have stopped, so the reaper reconciles once it answers again. */
    if (wc.status == 200 && !should_stop(rt))
        moat__engine_lost(rt);
}

static void *watch_main(void *arg)
{
    moat_runtime *rt = arg;
    CURLM *multi = rt->watch_multi;
    char version[16];
    long backoff_ms = 100;
    while (!should_stop(rt)) {
        moat_status st;
        if (moat_runtime_docker_version(rt, version, &st) == MOAT_CODE_OK) {
            char filters[256];
            snprintf(filters, sizeof(filters),
                     "{\"type\":[\"container\"],\"label\":[\"session_id\",\"chat_id\","
                     "\"expires_at\",\"moat.managed=true\"%s%s%s]}",
                     rt->instance_filter[0] ? ",\"" : "", rt->instance_filter,
                     rt->instance_filter[0] ? "\"" : "");
            CURL *esc = curl_easy_init();
            char *enc = esc ? curl_easy_escape(esc, filters, 0) : NULL;
            if (enc != NULL) {
                char url[1024];
                snprintf(url, sizeof(url), "%s/v%s/events?filters=%s", rt->docker_base_url, version,
                         enc);
                curl_free(enc);
                uint64_t t0 = moat_time_mono_ns();
                follow_events(rt, multi, url);
                if (moat_time_mono_ns() - t0 > 5000000000u)
                    backoff_ms = 100; /* it was a healthy connection */
            }
            if (esc != NULL)
                curl_easy_cleanup(esc);
        }
        /* Reconnect with backoff; wake early when asked to stop. */
        pthread_mutex_lock(&rt->reaper_mu);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += backoff_ms / 1000;
        until.tv_nsec += (backoff_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if (!rt->watch_stop)
            pthread_cond_timedwait(&rt->reaper_cv, &rt->reaper_mu, &until);
        pthread_mutex_unlock(&rt->reaper_mu);
        if (backoff_ms < 5000)
            backoff_ms *= 2;
    }
    return NULL;
}

moat_code moat_runtime_start_watcher(moat_runtime *rt, moat_status *st)
{
    moat_status_clear(st);
    pthread_mutex_lock(&rt->reaper_mu);
    if (rt->watch_running) {
        pthread_mutex_unlock(&rt->reaper_mu);
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "watcher_running",
                        "the event watcher is already running");
        return st->code;
    }
    rt->watch_multi = curl_multi_init();
    rt->watch_stop = false;
    int err = rt->watch_multi ? pthread_create(&rt->watch_thread, NULL, watch_main, rt) : -1;
    rt->watch_running = err == 0;
    if (err != 0 && rt->watch_multi != NULL) {
        curl_multi_cleanup(rt->watch_multi);
        rt->watch_multi = NULL;
    }
    pthread_mutex_unlock(&rt->reaper_mu);
    if (err != 0) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "thread_failed",
                        "cannot start the event watcher");
        return st->code;
    }
    return MOAT_CODE_OK;
}

void moat_runtime_stop_watcher(moat_runtime *rt)
{
    pthread_mutex_lock(&rt->reaper_mu);
    if (!rt->watch_running) {
        pthread_mutex_unlock(&rt->reaper_mu);
        return;
    }
    rt->watch_stop = true;
    pthread_cond_broadcast(&rt->reaper_cv);
    curl_multi_wakeup(rt->watch_multi);
    pthread_mutex_unlock(&rt->reaper_mu);
    pthread_join(rt->watch_thread, NULL);
    curl_multi_cleanup(rt->watch_multi);
    pthread_mutex_lock(&rt->reaper_mu);
    rt->watch_multi = NULL;
    rt->watch_running = false;
    pthread_mutex_unlock(&rt->reaper_mu);
    set_connected(rt, false);
}
