/* Executions: a run's SSE stream decoded into a bounded replay ring, delivered
 * to one consumer under byte credit (pausing the transfer when the consumer
 * falls behind), and kept attachable after the consumer left. */
#include "internal.h"

#include <inttypes.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One event in the ring; ev's pointers point into data[]. */
typedef struct rec {
    struct rec *next;
    uint64_t stamp; /* arrival order over all executions: the budget drops oldest first */
    size_t size;    /* bytes this record holds, for the ring's bound */
    size_t cost;
    moat_bridge_event ev;
    alignas(max_align_t) uint8_t data[];
} rec;

struct moat_bridge_exec {
    moat_bridge *b;
    bridge_req *r; /* NULL once the stream from execd ended */
    char *scope;
    char *id;
    bool attachable;
    moat_bridge_decoder *dec;            /* freed when the transfer ends */
    moat_bridge_decoder_stats dec_stats; /* the decoder's, kept when it was freed */
    bool binary_requested;
    bool background;
    bool timeout_set;

    rec *head, *tail;
    size_t ring_bytes;
    uint64_t last_seq;

    bool has_consumer;
    moat_bridge_consumer c;
    moat_bridge_account *account; /* the consumer's, while pending_bytes count in it */
    uint64_t credit;
    uint64_t delivered;
    rec *cursor;          /* next record to deliver, or NULL */
    size_t pending_bytes; /* bytes of records not yet delivered */
    bool delivering;
    bool paused;
    bool budget_paused;    /* paused by the budget or the account, not by its own ring */
    size_t held;           /* bytes curl keeps for us while the transfer is paused */
    size_t rx_touched;     /* of the transfer's receive buffer, the most one write filled */
    size_t transfer_bytes; /* rx_touched and the decoder's buffers, as the budget has them */

    bool failed; /* the decoder ended the stream */
    moat_status fail_status;
    bool finished;
    moat_status end_status;
    uint64_t retain_from_ns;

    struct moat_bridge_exec *next, *prev;
};

static size_t pause_mark(const moat_bridge_exec *ex)
{
    return ex->b->cfg.replay_bytes / 2;
}

/* Moves pinned bytes in the budget and the account along with pending_bytes. */
static void set_pending(moat_bridge_exec *ex, size_t bytes)
{
    moat_bridge_budget *bg = ex->b->cfg.budget;
    if (bg != NULL)
        bg->pinned = bg->pinned - ex->pending_bytes + bytes;
    if (ex->account != NULL)
        ex->account->pinned = ex->account->pinned - ex->pending_bytes + bytes;
    ex->pending_bytes = bytes;
}

/* curl keeps the bytes a write callback refused with CURL_WRITEFUNC_PAUSE until
 * the transfer resumes: they are held output too. */
static void set_held(moat_bridge_exec *ex, size_t bytes)
{
    moat_bridge_budget *bg = ex->b->cfg.budget;
    if (bg != NULL) {
        bg->used = bg->used - ex->held + bytes;
        bg->pinned = bg->pinned - ex->held + bytes;
        if (bg->used > bg->peak)
            bg->peak = bg->used;
    }
    if (ex->account != NULL)
        ex->account->pinned = ex->account->pinned - ex->held + bytes;
    ex->held = bytes;
}

/* A run transfer's buffers are memory output takes too: of curl's receive buffer
 * (MOAT_BRIDGE_EXEC_CHUNK) what the largest write so far filled, and the decoder's
 * line and binary buffers. They count as used (not pinned: they are no undelivered
 * output, and pinning them would pause the transfers they serve) until the transfer
 * ends; the replay they displace is dropped oldest first. */
static void set_transfer_bytes(moat_bridge_exec *ex, size_t bytes)
{
    moat_bridge_budget *bg = ex->b->cfg.budget;
    if (bg != NULL) {
        bg->used = bg->used - ex->transfer_bytes + bytes;
        if (bg->used > bg->peak)
            bg->peak = bg->used;
    }
    ex->transfer_bytes = bytes;
}

static void note_transfer_buffers(moat_bridge_exec *ex, size_t write_len)
{
    size_t page = 4096;
    size_t touched = (write_len + page - 1) / page * page;
    if (touched > MOAT_BRIDGE_EXEC_CHUNK)
        touched = MOAT_BRIDGE_EXEC_CHUNK;
    if (touched > ex->rx_touched)
        ex->rx_touched = touched;
    size_t decoder = ex->dec != NULL ? moat_bridge_decoder_buffer_bytes(ex->dec) : 0;
    if (ex->rx_touched + decoder != ex->transfer_bytes)
        set_transfer_bytes(ex, ex->rx_touched + decoder);
}

/* Moves what the execution pins (undelivered and held bytes) to another account. */
static void change_account(moat_bridge_exec *ex, moat_bridge_account *account)
{
    if (ex->account != NULL)
        ex->account->pinned -= ex->pending_bytes + ex->held;
    ex->account = account;
    if (account != NULL)
        account->pinned += ex->pending_bytes + ex->held;
}

static void ring_add(moat_bridge_exec *ex, rec *r)
{
    r->stamp = ex->b->rec_stamp++;
    if (ex->tail != NULL)
        ex->tail->next = r;
    else
        ex->head = r;
    ex->tail = r;
    ex->ring_bytes += r->size;
    moat_bridge_budget *bg = ex->b->cfg.budget;
    if (bg != NULL) {
        bg->used += r->size;
        if (bg->used > bg->peak)
            bg->peak = bg->used;
    }
}

/* Frees the ring's oldest record. */
static void ring_drop_head(moat_bridge_exec *ex)
{
    rec *h = ex->head;
    ex->head = h->next;
    if (ex->head == NULL)
        ex->tail = NULL;
    ex->ring_bytes -= h->size;
    if (ex->cursor == h)
        ex->cursor = h->next;
    if (ex->b->cfg.budget != NULL)
        ex->b->cfg.budget->used -= h->size;
    ex->b->released_bytes += h->size;
    free(h);
}

/* Over the budget's cap, records nobody waits for (delivered ones, those of
 * executions without consumer) go, oldest first over all executions. */
static void budget_evict(moat_bridge *b)
{
    moat_bridge_budget *bg = b->cfg.budget;
    while (bg != NULL && bg->cap > 0 && bg->used > bg->cap) {
        moat_bridge_exec *oldest = NULL;
        for (moat_bridge_exec *ex = b->execs; ex != NULL; ex = ex->next) {
            rec *h = ex->head;
            if (h == NULL || ex->delivering || (ex->has_consumer && h == ex->cursor))
                continue;
            if (oldest == NULL || h->stamp < oldest->head->stamp)
                oldest = ex;
        }
        if (oldest == NULL)
            return; /* only undelivered events left: transfers pause instead */
        bg->dropped_bytes += oldest->head->size;
        ring_drop_head(oldest);
    }
}

/* Whether this execution may not take more bytes for now because of the
 * budget or its consumer's account. */
static bool budget_blocks(const moat_bridge_exec *ex)
{
    /* Not counting what curl keeps for this transfer: resuming hands those bytes back to it,
     * and counting them could keep a paused transfer waiting on itself forever. */
    const moat_bridge_budget *bg = ex->b->cfg.budget;
    if (bg != NULL && bg->cap > 0 && bg->pinned - ex->held >= bg->cap)
        return true;
    const moat_bridge_account *ac = ex->account;
    if (!ex->has_consumer || ac == NULL || ac->limit == 0)
        return false;
    /* A transfer whose consumer has had everything holds nothing of the other transfers'
     * undelivered or held bytes: waiting on them would starve a stream that is read behind
     * others that are not. What it hands over goes to the owner's queues, so those alone
     * hold it back. */
    if (ex->pending_bytes == 0)
        return ac->charged >= ac->limit;
    return ac->pinned - ex->held >= ac->limit;
}

static moat_bridge_str put(uint8_t **w, moat_bridge_str s)
{
    char *dst = (char *)*w;
    if (s.len > 0)
        memcpy(dst, s.data, s.len);
    dst[s.len] = '\0';
    *w += s.len + 1;
    return (moat_bridge_str){dst, s.len};
}

static rec *make_rec(const moat_bridge_event *ev)
{
    size_t need = 0;
    switch (ev->kind) {
    case MOAT_BRIDGE_EV_INIT:
        need = ev->u.init.execution_id.len + 1;
        break;
    case MOAT_BRIDGE_EV_OUTPUT:
        need = ev->u.output.len;
        break;
    case MOAT_BRIDGE_EV_RESULT:
        need = ev->u.result.text.len + 1;
        break;
    case MOAT_BRIDGE_EV_ERROR:
        need = ev->u.error.traceback_count * sizeof(moat_bridge_str) + ev->u.error.name.len +
               ev->u.error.value.len + 2;
        for (size_t i = 0; i < ev->u.error.traceback_count; i++)
            need += ev->u.error.traceback[i].len + 1;
        break;
    case MOAT_BRIDGE_EV_EXIT:
        need = ev->u.exit.unknown_reason.len + 1;
        break;
    default:
        break;
    }
    rec *r = malloc(sizeof(*r) + need);
    if (r == NULL)
        return NULL;
    r->next = NULL;
    r->size = sizeof(*r) + need;
    r->cost = moat_bridge_event_cost(ev);
    r->ev = *ev;
    uint8_t *w = r->data;
    switch (ev->kind) {
    case MOAT_BRIDGE_EV_INIT:
        r->ev.u.init.execution_id = put(&w, ev->u.init.execution_id);
        break;
    case MOAT_BRIDGE_EV_OUTPUT:
        if (ev->u.output.len > 0)
            memcpy(w, ev->u.output.data, ev->u.output.len);
        r->ev.u.output.data = w;
        break;
    case MOAT_BRIDGE_EV_RESULT:
        r->ev.u.result.text = put(&w, ev->u.result.text);
        break;
    case MOAT_BRIDGE_EV_ERROR: {
        moat_bridge_str *tb = (moat_bridge_str *)(void *)w;
        w += ev->u.error.traceback_count * sizeof(moat_bridge_str);
        for (size_t i = 0; i < ev->u.error.traceback_count; i++)
            tb[i] = put(&w, ev->u.error.traceback[i]);
        r->ev.u.error.traceback = ev->u.error.traceback_count ? tb : NULL;
        r->ev.u.error.name = put(&w, ev->u.error.name);
        r->ev.u.error.value = put(&w, ev->u.error.value);
        break;
    }
    case MOAT_BRIDGE_EV_EXIT:
        r->ev.u.exit.unknown_reason = put(&w, ev->u.exit.unknown_reason);
        break;
    default:
        break;
    }
    return r;
}

static void evict(moat_bridge_exec *ex)
{
    while (ex->ring_bytes > ex->b->cfg.replay_bytes && ex->head != ex->tail) {
        if (ex->has_consumer && ex->head == ex->cursor)
            break; /* never drop what the consumer has not had */
        ring_drop_head(ex);
    }
}

static void set_id(moat_bridge_exec *ex, moat_bridge_str id)
{
    if (ex->id != NULL || id.len == 0 || memchr(id.data, '\0', id.len) != NULL)
        return;
    ex->id = strndup(id.data, id.len);
    if (ex->id == NULL)
        return;
    /* A bash session reuses its id for every run: the newest run is the one
     * Attach finds. */
    for (moat_bridge_exec *o = ex->b->execs; o != NULL; o = o->next) {
        if (o != ex && o->attachable && strcmp(o->id, ex->id) == 0 &&
            strcmp(o->scope, ex->scope) == 0)
            o->attachable = false;
    }
    ex->attachable = true;
}

static bool ring_emit(void *ud, const moat_bridge_event *ev)
{
    moat_bridge_exec *ex = ud;
    rec *r = make_rec(ev);
    if (r == NULL)
        return false;
    ring_add(ex, r);
    ex->last_seq = ev->sequence;
    if (ex->has_consumer) {
        set_pending(ex, ex->pending_bytes + r->size);
        if (ex->cursor == NULL)
            ex->cursor = r;
    }
    if (ev->kind == MOAT_BRIDGE_EV_INIT)
        set_id(ex, ev->u.init.execution_id);
    evict(ex);
    budget_evict(ex->b);
    return true;
}

static void maybe_unpause(moat_bridge_exec *ex)
{
    if (!ex->paused || ex->r == NULL || ex->delivering)
        return;
    if (ex->has_consumer && ex->pending_bytes >= pause_mark(ex))
        return;
    if (budget_blocks(ex)) {
        ex->b->budget_waiters = true;
        return;
    }
    if (ex->b->in_curl > 0) {
        /* inside another transfer's callback: resume once curl returns */
        ex->b->unpause_pending = true;
        return;
    }
    ex->paused = false;
    ex->budget_paused = false;
    set_held(ex, 0); /* curl hands them to exec_write again */
    moat__req_unpause(ex->r);
}

void moat__exec_unpause_all(moat_bridge *b)
{
    b->budget_waiters = false;
    for (moat_bridge_exec *ex = b->execs; ex != NULL; ex = ex->next)
        maybe_unpause(ex);
}

/* Pinned bytes went down: transfers the budget held may go on. Not from here:
 * resuming one can deliver to its consumer at once, and this runs from calls
 * (detach, cancel, charges) that promise no callbacks; the next socket action,
 * timeout or sweep resumes them. */
static void budget_released(moat_bridge *b)
{
    if (b->budget_waiters)
        b->unpause_pending = true;
}

static void deliver(moat_bridge_exec *ex)
{
    if (ex->delivering)
        return;
    ex->delivering = true;
    while (ex->has_consumer && ex->cursor != NULL) {
        rec *c = ex->cursor;
        if (c->cost > ex->credit)
            break;
        ex->credit -= c->cost;
        ex->delivered = c->ev.sequence;
        ex->cursor = c->next;
        set_pending(ex, ex->pending_bytes - c->size);
        ex->c.on_event(ex->c.ud, ex, &c->ev);
    }
    if (ex->has_consumer && ex->finished && ex->cursor == NULL) {
        moat_bridge_consumer c = ex->c;
        set_pending(ex, 0);
        ex->has_consumer = false;
        change_account(ex, NULL);
        ex->retain_from_ns = moat_time_mono_ns();
        c.on_end(c.ud, ex, &ex->end_status);
    }
    ex->delivering = false;
    maybe_unpause(ex);
    budget_released(ex->b);
}

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

/* What a pause makes curl keep: the refused piece, and (without asking us) every
 * further chunk of the same read, appended to a buffer that grows by doubling (curl
 * 7.88, sendf.c pausewrite). The budget counts that bound, not the piece. */
_Static_assert(MOAT_BRIDGE_TRANSFER_OVERSHOOT_MAX >=
                   4 * MOAT_BRIDGE_EXEC_CHUNK + MOAT_BRIDGE_MAX_BINARY,
               "the documented overshoot per transfer covers what it counts");

static size_t paused_copy_bound(size_t refused)
{
    size_t read = refused > MOAT_BRIDGE_EXEC_CHUNK ? refused : MOAT_BRIDGE_EXEC_CHUNK;
    return 2 * read;
}

/* Refuses this write: curl keeps it (counted, and the replay it displaces dropped at once,
 * since a paused transfer adds no record that would drop it later). */
static size_t pause_write(moat_bridge_exec *ex, size_t n, bool by_budget)
{
    ex->paused = true;
    if (by_budget) {
        ex->budget_paused = true;
        ex->b->budget_waiters = true;
    }
    set_held(ex, paused_copy_bound(n));
    budget_evict(ex->b);
    return CURL_WRITEFUNC_PAUSE;
}

static size_t exec_write(bridge_req *r, const char *p, size_t n)
{
    moat_bridge_exec *ex = r->owner;
    if (ex == NULL || ex->failed)
        return 0;
    note_transfer_buffers(ex, n);
    if (ex->has_consumer && ex->pending_bytes >= pause_mark(ex))
        return pause_write(ex, n, false);
    if (budget_blocks(ex))
        return pause_write(ex, n, true);
    set_held(ex, 0);
    if (ensure_decoder(ex) != MOAT_OK)
        return 0;
    moat_status st;
    moat_status_clear(&st);
    moat_err err = moat_bridge_decoder_feed(ex->dec, (const uint8_t *)p, n, ring_emit, ex, &st);
    note_transfer_buffers(ex, n);
    budget_evict(ex->b);
    if (err != MOAT_OK) {
        if (err == MOAT_E_CLOSED || err == MOAT_E_NOMEM)
            moat_status_set(&st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory",
                            "out of memory while decoding execd's stream");
        ex->failed = true;
        ex->fail_status = st;
        moat_bridge_decoder_abort(ex->dec, st.message, ring_emit, ex);
        return 0;
    }
    deliver(ex);
    return r->cancelled ? 0 : n;
}

/* The stream from execd is over: what served it goes (curl's buffers with the
 * request; the decoder's line and binary buffers here), so a retained execution
 * holds only its replay. */
static void transfer_ended(moat_bridge_exec *ex)
{
    ex->r = NULL;
    ex->paused = false;
    set_held(ex, 0);
    set_transfer_bytes(ex, 0);
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
    deliver(ex);
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
            moat_bridge_decoder_finish(ex->dec, ring_emit, ex, &st);
        } else {
            moat_status_set(&st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        }
    } else {
        moat__req_fail_status(r, rc, &st);
        if (answered && ex->dec != NULL &&
            moat_bridge_decoder_abort(ex->dec, st.message, ring_emit, ex) &&
            st.code != MOAT_CODE_CANCELLED) {
            /* execd (issue #1277) can end its chunked body badly after the
             * final event: nothing was lost. */
            moat_status_clear(&st);
        } else if (answered && ex->dec == NULL && ensure_decoder(ex) == MOAT_OK) {
            moat_bridge_decoder_abort(ex->dec, st.message, ring_emit, ex);
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

bool moat_bridge_budget_exhausted(const moat_bridge *b, const moat_bridge_account *account)
{
    const moat_bridge_budget *bg = b->cfg.budget;
    if (bg != NULL && bg->cap > 0 && bg->pinned >= bg->cap)
        return true;
    return account != NULL && account->limit > 0 && account->pinned >= account->limit;
}

/* Only the global cap refuses here: an account at its limit pauses its
 * transfers, which bounds it whatever the number of its streams, and a party
 * that reads is there only for moments. Its owner knows whether it reads. */
static bool refuse_for_budget(moat_bridge *b, moat_status *st)
{
    if (!moat_bridge_budget_exhausted(b, NULL))
        return false;
    moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "memory_budget_exhausted",
                    "the server's undelivered output is at its memory budget "
                    "(memory_budget_bytes); retry when streams have been read");
    moat_status_add_detail(st, "scope", "server");
    b->cfg.budget->refused++;
    return true;
}

void moat_bridge_budget_charge(moat_bridge *b, moat_bridge_account *account, int64_t delta)
{
    moat_bridge_budget *bg = b->cfg.budget;
    if (bg == NULL)
        return;
    size_t n = (size_t)(delta < 0 ? -delta : delta);
    if (delta >= 0) {
        bg->used += n;
        bg->pinned += n;
        if (bg->used > bg->peak)
            bg->peak = bg->used;
        if (account != NULL) {
            account->pinned += n;
            account->charged += n;
        }
        budget_evict(b);
        return;
    }
    bg->used -= n;
    bg->pinned -= n;
    if (account != NULL) {
        account->pinned -= n;
        account->charged -= n;
    }
    budget_released(b);
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
    set_pending(ex, 0);
    set_held(ex, 0);
    set_transfer_bytes(ex, 0);
    change_account(ex, NULL);
    while (ex->head != NULL)
        ring_drop_head(ex);
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
    if (refuse_for_budget(b, st))
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
    change_account(ex, c->account);
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
    deliver(ex);
}

void moat_bridge_exec_detach(moat_bridge_exec *ex)
{
    if (!ex->has_consumer)
        return;
    set_pending(ex, 0);
    ex->has_consumer = false;
    change_account(ex, NULL);
    ex->cursor = NULL;
    ex->retain_from_ns = moat_time_mono_ns();
    evict(ex);
    maybe_unpause(ex);
    budget_released(ex->b);
}

void moat_bridge_exec_set_account(moat_bridge_exec *ex, moat_bridge_account *account)
{
    change_account(ex, ex->has_consumer ? account : NULL);
    budget_released(ex->b);
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
            moat_bridge_decoder_abort(ex->dec, "the stream was cancelled", ring_emit, ex);
        transfer_ended(ex);
        ex->finished = true;
        ex->end_status = st;
    }
    ex->retain_from_ns = moat_time_mono_ns();
    if (ex->has_consumer) {
        moat_bridge_consumer c = ex->c;
        set_pending(ex, 0);
        ex->has_consumer = false;
        change_account(ex, NULL);
        ex->cursor = NULL;
        c.on_end(c.ud, ex, &st);
        budget_released(ex->b);
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
    if (refuse_for_budget(b, st))
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
        set_pending(ex, 0);
        ex->has_consumer = false;
        change_account(ex, NULL);
        old.on_end(old.ud, ex, &sup);
    }
    ex->c = *c;
    ex->has_consumer = true;
    change_account(ex, c->account);
    ex->credit = initial_credit;
    ex->delivered = after_sequence;
    ex->cursor = ex->head;
    while (ex->cursor != NULL && ex->cursor->ev.sequence <= after_sequence)
        ex->cursor = ex->cursor->next;
    size_t pending = 0;
    for (rec *r = ex->cursor; r != NULL; r = r->next)
        pending += r->size;
    set_pending(ex, pending);
    *out = ex;
    deliver(ex);
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
                    ring_drop_head(ex);
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
