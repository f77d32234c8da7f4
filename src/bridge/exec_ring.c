/* The replay ring of an execution (exec_internal.h has the execution itself; exec.c its life):
 * each decoded event copied into one record, kept up to replay_bytes for Attach, delivered to
 * the consumer as its byte credit allows, the transfer paused while the consumer or the memory
 * budget is behind and resumed once they have room, and the budget's accounting of all of it. */
#include "exec_internal.h"

#include <stdlib.h>
#include <string.h>

size_t moat__exec_pause_mark(const moat_bridge_exec *ex)
{
    return ex->b->cfg.replay_bytes / 2;
}

/* Moves pinned bytes in the budget and the account along with pending_bytes. */
void moat__exec_set_pending(moat_bridge_exec *ex, size_t bytes)
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
void moat__exec_set_held(moat_bridge_exec *ex, size_t bytes)
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
void moat__exec_set_transfer_bytes(moat_bridge_exec *ex, size_t bytes)
{
    moat_bridge_budget *bg = ex->b->cfg.budget;
    if (bg != NULL) {
        bg->used = bg->used - ex->transfer_bytes + bytes;
        if (bg->used > bg->peak)
            bg->peak = bg->used;
    }
    ex->transfer_bytes = bytes;
}

void moat__exec_note_transfer_buffers(moat_bridge_exec *ex, size_t write_len)
{
    size_t page = 4096;
    size_t touched = (write_len + page - 1) / page * page;
    if (touched > MOAT_BRIDGE_EXEC_CHUNK)
        touched = MOAT_BRIDGE_EXEC_CHUNK;
    if (touched > ex->rx_touched)
        ex->rx_touched = touched;
    size_t decoder = ex->dec != NULL ? moat_bridge_decoder_buffer_bytes(ex->dec) : 0;
    if (ex->rx_touched + decoder != ex->transfer_bytes)
        moat__exec_set_transfer_bytes(ex, ex->rx_touched + decoder);
}

/* Moves what the execution pins (undelivered and held bytes) to another account. */
void moat__exec_change_account(moat_bridge_exec *ex, moat_bridge_account *account)
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
void moat__exec_ring_drop_head(moat_bridge_exec *ex)
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
void moat__exec_budget_evict(moat_bridge *b)
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
        moat__exec_ring_drop_head(oldest);
    }
}

/* Whether this execution may not take more bytes for now because of the
 * budget or its consumer's account. */
bool moat__exec_budget_blocks(const moat_bridge_exec *ex)
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

void moat__exec_evict(moat_bridge_exec *ex)
{
    while (ex->ring_bytes > ex->b->cfg.replay_bytes && ex->head != ex->tail) {
        if (ex->has_consumer && ex->head == ex->cursor)
            break; /* never drop what the consumer has not had */
        moat__exec_ring_drop_head(ex);
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

bool moat__exec_ring_emit(void *ud, const moat_bridge_event *ev)
{
    moat_bridge_exec *ex = ud;
    rec *r = make_rec(ev);
    if (r == NULL)
        return false;
    ring_add(ex, r);
    ex->last_seq = ev->sequence;
    if (ex->has_consumer) {
        moat__exec_set_pending(ex, ex->pending_bytes + r->size);
        if (ex->cursor == NULL)
            ex->cursor = r;
    }
    if (ev->kind == MOAT_BRIDGE_EV_INIT)
        set_id(ex, ev->u.init.execution_id);
    moat__exec_evict(ex);
    moat__exec_budget_evict(ex->b);
    return true;
}

void moat__exec_maybe_unpause(moat_bridge_exec *ex)
{
    if (!ex->paused || ex->r == NULL || ex->delivering)
        return;
    if (ex->has_consumer && ex->pending_bytes >= moat__exec_pause_mark(ex))
        return;
    if (moat__exec_budget_blocks(ex)) {
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
    moat__exec_set_held(ex, 0); /* curl hands them to exec_write again */
    moat__req_unpause(ex->r);
}

void moat__exec_unpause_all(moat_bridge *b)
{
    b->budget_waiters = false;
    for (moat_bridge_exec *ex = b->execs; ex != NULL; ex = ex->next)
        moat__exec_maybe_unpause(ex);
}

/* Pinned bytes went down: transfers the budget held may go on. Not from here:
 * resuming one can deliver to its consumer at once, and this runs from calls
 * (detach, cancel, charges) that promise no callbacks; the next socket action,
 * timeout or sweep resumes them. */
void moat__exec_budget_released(moat_bridge *b)
{
    if (b->budget_waiters)
        b->unpause_pending = true;
}

void moat__exec_deliver(moat_bridge_exec *ex)
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
        moat__exec_set_pending(ex, ex->pending_bytes - c->size);
        ex->c.on_event(ex->c.ud, ex, &c->ev);
    }
    if (ex->has_consumer && ex->finished && ex->cursor == NULL) {
        moat_bridge_consumer c = ex->c;
        moat__exec_set_pending(ex, 0);
        ex->has_consumer = false;
        moat__exec_change_account(ex, NULL);
        ex->retain_from_ns = moat_time_mono_ns();
        c.on_end(c.ud, ex, &ex->end_status);
    }
    ex->delivering = false;
    moat__exec_maybe_unpause(ex);
    moat__exec_budget_released(ex->b);
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
size_t moat__exec_pause_write(moat_bridge_exec *ex, size_t n, bool by_budget)
{
    ex->paused = true;
    if (by_budget) {
        ex->budget_paused = true;
        ex->b->budget_waiters = true;
    }
    moat__exec_set_held(ex, paused_copy_bound(n));
    moat__exec_budget_evict(ex->b);
    return CURL_WRITEFUNC_PAUSE;
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
bool moat__exec_refuse_for_budget(moat_bridge *b, moat_status *st)
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
        moat__exec_budget_evict(b);
        return;
    }
    bg->used -= n;
    bg->pinned -= n;
    if (account != NULL) {
        account->pinned -= n;
        account->charged -= n;
    }
    moat__exec_budget_released(b);
}
