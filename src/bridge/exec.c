/* Executions: a run's SSE stream decoded into a bounded replay ring, delivered
 * to one consumer under byte credit (pausing the transfer when the consumer
 * falls behind), and kept attachable after the consumer left. This file has an
 * execution's life (the run request, curl's callbacks, attach, detach, cancel,
 * retention); the ring, the credit and the budget are exec_ring.c's. */
#include "exec_internal.h"

#include <inttypes.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static moat_err ensure_decoder(moat_bridge_exec *ex)
{
    if (ex->dec != NULL)
        return MOAT_OK;
    moat_bridge_decoder_opts o = {
        .max_line = ex->b->cfg.max_line,
        .oversize = ex->b->cfg.oversize,
        .binary = ex->binary_requested && ex->r != NULL && ex->r->moat_binary,
        .background = ex->background,
        .timeout_set = ex->timeout_set,
    };
    return moat_bridge_decoder_new(&o, &ex->dec);
}

static size_t exec_write(bridge_req *r, const char *p, size_t n)
{
    moat_bridge_exec *ex = r->owner;
    if (ex == NULL || ex->failed)
        return 0;
    moat__exec_note_transfer_buffers(ex, n);
    if (ex->has_consumer && ex->pending_bytes >= moat__exec_pause_mark(ex))
        return moat__exec_pause_write(ex, n, false);
    if (moat__exec_budget_blocks(ex))
        return moat__exec_pause_write(ex, n, true);
    moat__exec_set_held(ex, 0);
    if (ensure_decoder(ex) != MOAT_OK)
        return 0;
    moat_status st;
    moat_status_clear(&st);
    moat_err err =
        moat_bridge_decoder_feed(ex->dec, (const uint8_t *)p, n, moat__exec_ring_emit, ex, &st);
    moat__exec_note_transfer_buffers(ex, n);
    moat__exec_budget_evict(ex->b);
    if (err != MOAT_OK) {
        if (err == MOAT_E_CLOSED || err == MOAT_E_NOMEM)
            moat_status_set(&st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory",
                            "out of memory while decoding execd's stream");
        ex->failed = true;
        ex->fail_status = st;
        moat_bridge_decoder_abort(ex->dec, st.message, moat__exec_ring_emit, ex);
        return 0;
    }
    moat__exec_deliver(ex);
    return r->cancelled ? 0 : n;
}

/* The stream from execd is over: what served it goes (curl's buffers with the
 * request; the decoder's line and binary buffers here), so a retained execution
 * holds only its replay. */
static void transfer_ended(moat_bridge_exec *ex)
{
    ex->r = NULL;
    ex->paused = false;
    moat__exec_set_held(ex, 0);
    moat__exec_set_transfer_bytes(ex, 0);
    ex->rx_touched = 0;
    if (ex->dec != NULL) {
        moat_bridge_decoder_get_stats(ex->dec, &ex->dec_stats);
        moat_bridge_decoder_free(ex->dec);
        ex->dec = NULL;
    }
}

static void finish_exec(moat_bridge_exec *ex, const moat_status *st)
{
    ex->finished = true;
    ex->end_status = *st;
    ex->retain_from_ns = moat_time_mono_ns();
    moat__exec_deliver(ex);
}

static void exec_done(bridge_req *r, CURLcode rc)
{
    moat_bridge_exec *ex = r->owner;
    if (ex == NULL)
        return;
    moat_status st;
    moat_status_clear(&st);
    if (r->http_status == 0)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->http_status);
    bool answered = r->http_status >= 200 && r->http_status < 300;
    if (ex->failed) {
        st = ex->fail_status;
    } else if (rc == CURLE_OK && answered) {
        if (ensure_decoder(ex) == MOAT_OK) {
            moat_bridge_decoder_finish(ex->dec, moat__exec_ring_emit, ex, &st);
        } else {
            moat_status_set(&st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        }
    } else {
        moat__req_fail_status(r, rc, &st);
        if (answered && ex->dec != NULL &&
            moat_bridge_decoder_abort(ex->dec, st.message, moat__exec_ring_emit, ex) &&
            st.code != MOAT_CODE_CANCELLED) {
            /* execd (issue #1277) can end its chunked body badly after the
             * final event: nothing was lost. */
            moat_status_clear(&st);
        } else if (answered && ex->dec == NULL && ensure_decoder(ex) == MOAT_OK) {
            moat_bridge_decoder_abort(ex->dec, st.message, moat__exec_ring_emit, ex);
        }
    }
    transfer_ended(ex);
    finish_exec(ex, &st);
}

static bool blank(const char *s)
{
    for (; s != NULL && *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n' && *s != '\v' && *s != '\f')
            return false;
    return true;
}

static void link_exec(moat_bridge *b, moat_bridge_exec *ex)
{
    ex->next = b->execs;
    if (b->execs != NULL)
        b->execs->prev = ex;
    b->execs = ex;
}

static void unlink_free(moat_bridge_exec *ex)
{
    moat_bridge *b = ex->b;
    if (ex->prev != NULL)
        ex->prev->next = ex->next;
    else if (b->execs == ex)
        b->execs = ex->next;
    if (ex->next != NULL)
        ex->next->prev = ex->prev;
    if (ex->r != NULL) {
        ex->r->owner = NULL;
        moat__req_cancel(ex->r);
    }
    moat__exec_set_pending(ex, 0);
    moat__exec_set_held(ex, 0);
    moat__exec_set_transfer_bytes(ex, 0);
    moat__exec_change_account(ex, NULL);
    while (ex->head != NULL)
        moat__exec_ring_drop_head(ex);
    moat_bridge_decoder_free(ex->dec);
    free(ex->scope);
    free(ex->id);
    free(ex);
}

/* Sets key to a new string: a repeated env key keeps its last value. */
static bool set_string(cJSON *obj, const char *key, const char *value)
{
    cJSON *v = cJSON_CreateString(value);
    if (v == NULL)
        return false;
    if (cJSON_GetObjectItemCaseSensitive(obj, key) != NULL)
        return cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v);
    if (!cJSON_AddItemToObject(obj, key, v)) {
        cJSON_Delete(v);
        return false;
    }
    return true;
}

/* The request body, or NULL when out of memory; free with cJSON_free. */
static char *run_body(const moat_bridge_run_opts *o)
{
    cJSON *j = cJSON_CreateObject();
    bool ok = j != NULL && set_string(j, "command", o->command);
    if (ok && o->cwd != NULL && *o->cwd)
        ok = set_string(j, "cwd", o->cwd);
    if (ok && o->timeout_ms > 0) {
        /* written as an exact integer: cJSON prints doubles past 2^53 approximately */
        char num[24];
        snprintf(num, sizeof(num), "%" PRIu64, o->timeout_ms);
        ok = cJSON_AddRawToObject(j, "timeout", num) != NULL;
    }
    if (ok && o->background)
        ok = cJSON_AddTrueToObject(j, "background") != NULL;
    if (ok && o->env_count > 0) {
        cJSON *env = cJSON_AddObjectToObject(j, "envs");
        ok = env != NULL;
        for (size_t i = 0; ok && i < o->env_count; i++)
            ok = set_string(env, o->env_keys[i], o->env_values[i]);
    }
    char *s = ok ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return s;
}

moat_err moat_bridge_run(moat_bridge *b, const moat_bridge_endpoint *ep,
                         const moat_bridge_run_opts *opts, const moat_bridge_consumer *c,
                         uint64_t initial_credit, moat_bridge_exec **out, moat_status *st)
{
    if (opts == NULL || opts->command == NULL || blank(opts->command)) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "blank_command",
                        "the command must not be blank");
        return MOAT_E_INVAL;
    }
    if (opts->session_id != NULL && (opts->env_count > 0 || opts->background)) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "bad_session_run",
                        "a run in a bash session takes no env and no background");
        return MOAT_E_INVAL;
    }
    if (opts->session_id != NULL && blank(opts->session_id)) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "blank_session_id",
                        "the session id must not be blank");
        return MOAT_E_INVAL;
    }
    for (size_t i = 0; i < opts->env_count; i++) {
        if (opts->env_keys[i] == NULL || opts->env_values[i] == NULL || !*opts->env_keys[i]) {
            moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "bad_env", "an env entry is empty");
            return MOAT_E_INVAL;
        }
    }
    if (c == NULL || c->on_event == NULL || c->on_end == NULL) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "no_consumer", "a consumer is required");
        return MOAT_E_INVAL;
    }
    if (moat__exec_refuse_for_budget(b, st))
        return MOAT_E_TOO_BIG;
    char *path = NULL;
    if (opts->session_id != NULL) {
        char *id = moat__escape(opts->session_id);
        size_t n = (id != NULL ? strlen(id) : 0) + 16;
        path = malloc(n);
        if (path != NULL && id != NULL)
            snprintf(path, n, "/session/%s/run", id);
        curl_free(id);
        if (id == NULL) {
            free(path);
            path = NULL;
        }
    } else {
        path = strdup("/command");
    }
    char *body = run_body(opts);
    moat_bridge_exec *ex = calloc(1, sizeof(*ex));
    const char *scope = ep != NULL && ep->scope != NULL ? ep->scope : "";
    if (ex != NULL)
        ex->scope = strdup(scope);
    if (path == NULL || body == NULL || ex == NULL || ex->scope == NULL) {
        free(path);
        cJSON_free(body);
        if (ex != NULL)
            free(ex->scope);
        free(ex);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return MOAT_E_NOMEM;
    }
    bridge_req *r = moat__req_new(b, ep, "POST", path, body, st);
    free(path);
    cJSON_free(body);
    if (r == NULL) {
        free(ex->scope);
        free(ex);
        return MOAT_E_INVAL;
    }
    r->hdrs = curl_slist_append(r->hdrs, "Accept: text/event-stream");
    r->hdrs = curl_slist_append(r->hdrs, "Cache-Control: no-cache");
    if (b->cfg.binary_output)
        r->hdrs = curl_slist_append(r->hdrs, "X-Moat-Output: binary");
    long idle_s = (long)((b->cfg.idle_timeout_ms + 999) / 1000);
    curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, 0L);
    curl_easy_setopt(r->easy, CURLOPT_BUFFERSIZE, (long)MOAT_BRIDGE_EXEC_CHUNK);
    curl_easy_setopt(r->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(r->easy, CURLOPT_LOW_SPEED_TIME, idle_s);
    r->write = exec_write;
    r->done = exec_done;
    r->owner = ex;
    ex->b = b;
    ex->r = r;
    ex->binary_requested = b->cfg.binary_output;
    ex->background = opts->background;
    ex->timeout_set = opts->timeout_ms > 0;
    ex->has_consumer = true;
    ex->c = *c;
    moat__exec_change_account(ex, c->account);
    ex->credit = initial_credit;
    if (moat__req_start(r, st) != MOAT_OK) {
        free(ex->scope);
        free(ex);
        return MOAT_E_IO;
    }
    link_exec(b, ex);
    *out = ex;
    return MOAT_OK;
}

void moat_bridge_exec_credit(moat_bridge_exec *ex, uint64_t bytes)
{
    ex->credit = ex->credit + bytes < ex->credit ? UINT64_MAX : ex->credit + bytes;
    moat__exec_deliver(ex);
}

void moat_bridge_exec_detach(moat_bridge_exec *ex)
{
    if (!ex->has_consumer)
        return;
    moat__exec_set_pending(ex, 0);
    ex->has_consumer = false;
    moat__exec_change_account(ex, NULL);
    ex->cursor = NULL;
    ex->retain_from_ns = moat_time_mono_ns();
    moat__exec_evict(ex);
    moat__exec_maybe_unpause(ex);
    moat__exec_budget_released(ex->b);
}

void moat_bridge_exec_set_account(moat_bridge_exec *ex, moat_bridge_account *account)
{
    moat__exec_change_account(ex, ex->has_consumer ? account : NULL);
    moat__exec_budget_released(ex->b);
}

void moat_bridge_exec_cancel(moat_bridge_exec *ex)
{
    moat_status st;
    moat_status_set(&st, MOAT_CODE_CANCELLED, "cancelled", "the stream was cancelled");
    if (ex->r != NULL) {
        bridge_req *r = ex->r;
        ex->r = NULL;
        r->owner = NULL;
        moat__req_cancel(r);
        if (ex->dec != NULL || ensure_decoder(ex) == MOAT_OK)
            moat_bridge_decoder_abort(ex->dec, "the stream was cancelled", moat__exec_ring_emit,
                                      ex);
        transfer_ended(ex);
        ex->finished = true;
        ex->end_status = st;
    }
    ex->retain_from_ns = moat_time_mono_ns();
    if (ex->has_consumer) {
        moat_bridge_consumer c = ex->c;
        moat__exec_set_pending(ex, 0);
        ex->has_consumer = false;
        moat__exec_change_account(ex, NULL);
        ex->cursor = NULL;
        c.on_end(c.ud, ex, &st);
        moat__exec_budget_released(ex->b);
    }
}

const char *moat_bridge_exec_id(const moat_bridge_exec *ex)
{
    return ex->id != NULL ? ex->id : "";
}

void moat_bridge_exec_get_stats(const moat_bridge_exec *ex, moat_bridge_exec_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->last_sequence = ex->last_seq;
    out->delivered_sequence = ex->delivered;
    out->oldest_sequence = ex->head != NULL ? ex->head->ev.sequence : 0;
    out->ring_bytes = ex->ring_bytes;
    out->transfer_buffer_bytes = ex->transfer_bytes;
    out->credit = ex->credit;
    out->paused = ex->paused;
    out->finished = ex->finished;
    if (ex->dec != NULL)
        moat_bridge_decoder_get_stats(ex->dec, &out->decoder);
    else
        out->decoder = ex->dec_stats;
}

moat_err moat_bridge_attach(moat_bridge *b, const char *scope, const char *execution_id,
                            uint64_t after_sequence, const moat_bridge_consumer *c,
                            uint64_t initial_credit, moat_bridge_exec **out, moat_status *st)
{
    if (scope == NULL)
        scope = "";
    if (execution_id == NULL || c == NULL || c->on_event == NULL || c->on_end == NULL) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "bad_attach",
                        "attach needs an execution id and a consumer");
        return MOAT_E_INVAL;
    }
    if (moat__exec_refuse_for_budget(b, st))
        return MOAT_E_TOO_BIG;
    moat_bridge_exec *ex = b->execs;
    for (; ex != NULL; ex = ex->next)
        if (ex->attachable && strcmp(ex->id, execution_id) == 0 && strcmp(ex->scope, scope) == 0)
            break;
    if (ex == NULL) {
        moat_status_set(st, MOAT_CODE_NOT_FOUND, "execution_not_found",
                        "no execution %s is retained", execution_id);
        return MOAT_E_NOT_FOUND;
    }
    if (after_sequence > ex->last_seq) {
        moat_status_set(st, MOAT_CODE_OUT_OF_RANGE, "sequence_beyond_last",
                        "after_sequence %llu is beyond the last event %llu",
                        (unsigned long long)after_sequence, (unsigned long long)ex->last_seq);
        return MOAT_E_INVAL;
    }
    if (after_sequence < ex->last_seq &&
        (ex->head == NULL || ex->head->ev.sequence > after_sequence + 1)) {
        moat_status_set(st, MOAT_CODE_DATA_LOSS, "replay_ring_overrun",
                        "events %llu.. have left the replay ring (oldest kept: %llu)",
                        (unsigned long long)after_sequence + 1,
                        (unsigned long long)(ex->head != NULL ? ex->head->ev.sequence : 0));
        return MOAT_E_NOT_FOUND;
    }
    if (ex->has_consumer) {
        moat_bridge_consumer old = ex->c;
        moat_status sup;
        moat_status_set(&sup, MOAT_CODE_ABORTED, "superseded_by_attach",
                        "another consumer attached to this execution");
        moat__exec_set_pending(ex, 0);
        ex->has_consumer = false;
        moat__exec_change_account(ex, NULL);
        old.on_end(old.ud, ex, &sup);
    }
    ex->c = *c;
    ex->has_consumer = true;
    moat__exec_change_account(ex, c->account);
    ex->credit = initial_credit;
    ex->delivered = after_sequence;
    ex->cursor = ex->head;
    while (ex->cursor != NULL && ex->cursor->ev.sequence <= after_sequence)
        ex->cursor = ex->cursor->next;
    size_t pending = 0;
    for (rec *r = ex->cursor; r != NULL; r = r->next)
        pending += r->size;
    moat__exec_set_pending(ex, pending);
    *out = ex;
    moat__exec_deliver(ex);
    return MOAT_OK;
}

void moat__exec_sweep(moat_bridge *b, bool force)
{
    if (b->in_curl == 0 && b->unpause_pending) {
        b->unpause_pending = false;
        moat__exec_unpause_all(b);
    }
    uint64_t now = moat_time_mono_ns();
    if (!force && now - b->last_sweep_ns < 1000000000ull)
        return;
    b->last_sweep_ns = now;
    uint64_t keep = (uint64_t)b->cfg.retention_ms * 1000000ull;
    moat_bridge_exec *ex = b->execs;
    while (ex != NULL) {
        moat_bridge_exec *n = ex->next;
        if (!ex->has_consumer && ex->finished && ex->r == NULL && !ex->delivering &&
            (!ex->attachable || now - ex->retain_from_ns >= keep))
            unlink_free(ex);
        ex = n;
    }
    moat__exec_trim(b);
}

void moat__exec_trim(moat_bridge *b)
{
    /* glibc keeps freed heap pages (and raises its mmap threshold after big
     * frees): hand them back once a lot was released, so RSS follows the load. */
    if (b->released_bytes < MOAT_BRIDGE_TRIM_BYTES)
        return;
    b->released_bytes = 0;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

void moat_bridge_drop_scope(moat_bridge *b, const char *scope)
{
    moat_bridge_exec *ex = b->execs;
    while (ex != NULL) {
        moat_bridge_exec *n = ex->next;
        if (!ex->has_consumer && !ex->delivering && strcmp(ex->scope, scope) == 0) {
            if (ex->r == NULL)
                unlink_free(ex);
            else
                while (ex->head != NULL)
                    moat__exec_ring_drop_head(ex);
        }
        ex = n;
    }
    moat__exec_trim(b);
}

void moat__exec_free_all(moat_bridge *b)
{
    while (b->execs != NULL) {
        moat_bridge_exec *ex = b->execs;
        if (ex->has_consumer) {
            moat_status st;
            moat_status_set(&st, MOAT_CODE_CANCELLED, "bridge_closed", "the bridge was closed");
            ex->has_consumer = false;
            ex->c.on_end(ex->c.ud, ex, &st);
        }
        unlink_free(ex);
    }
}
