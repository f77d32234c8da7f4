/* The execd SSE decoder: line splitting with a hard line limit, both framings
 * (`data: {json}` and execd's bare `{json}`), the seed's skip rules, the
 * binary-safe output frames of moat-execd, and the mapping to events with the
 * seed's exit-code rule. No I/O. */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum dec_state {
    DEC_LINE = 0,    /* reading lines */
    DEC_PAYLOAD = 1, /* reading the raw bytes of a binary output frame */
    DEC_TRAILER = 2, /* reading the "\n\n" after them */
    DEC_DONE = 3,    /* finished or failed */
};

#define EXIT_REASON_MAX 384

struct moat_bridge_decoder {
    moat_bridge_decoder_opts o;
    moat_buf line;
    bool skipping; /* inside an oversize line, dropping bytes until LF */
    enum dec_state state;
    /* binary frame in progress */
    moat_bridge_stream bin_stream;
    int64_t bin_ts;
    size_t bin_need;
    size_t bin_have;
    uint8_t *bin_buf;
    unsigned trailer_left;

    uint64_t seq;
    bool stopped; /* emit returned false */
    bool exited;  /* the EXIT event went out */
    bool saw_complete;
    bool saw_error;
    bool error_numeric;
    int32_t error_code;
    char exit_reason[EXIT_REASON_MAX];
    moat_bridge_decoder_stats stats;
};

static void set_st(moat_status *st, moat_code code, const char *reason, const char *msg)
{
    if (st != NULL)
        moat_status_set(st, code, reason, "%s", msg);
}

moat_err moat_bridge_decoder_new(const moat_bridge_decoder_opts *opts, moat_bridge_decoder **out)
{
    moat_bridge_decoder *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return MOAT_E_NOMEM;
    if (opts != NULL)
        d->o = *opts;
    if (d->o.max_line == 0)
        d->o.max_line = MOAT_BRIDGE_DEFAULT_MAX_LINE;
    moat_buf_init(&d->line, d->o.max_line);
    *out = d;
    return MOAT_OK;
}

void moat_bridge_decoder_free(moat_bridge_decoder *d)
{
    if (d == NULL)
        return;
    moat_buf_free(&d->line);
    free(d->bin_buf);
    free(d);
}

void moat_bridge_decoder_get_stats(const moat_bridge_decoder *d, moat_bridge_decoder_stats *out)
{
    *out = d->stats;
}

static bool emit_event(moat_bridge_decoder *d, moat_bridge_event *ev, moat_bridge_emit_fn emit,
                       void *ud)
{
    ev->sequence = ++d->seq;
    d->stats.events++;
    if (!emit(ud, ev)) {
        d->stopped = true;
        return false;
    }
    return true;
}

static bool is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static bool has_prefix(const uint8_t *p, size_t n, const char *pre)
{
    size_t k = strlen(pre);
    return n >= k && memcmp(p, pre, k) == 0;
}

static moat_bridge_str jstr(json_t *obj, const char *key)
{
    json_t *v = obj != NULL ? json_object_get(obj, key) : NULL;
    if (v != NULL && json_is_string(v))
        return (moat_bridge_str){json_string_value(v), json_string_length(v)};
    return (moat_bridge_str){"", 0};
}

static int64_t jint(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (v != NULL && json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (v != NULL && json_is_real(v)) {
        double d = json_real_value(v);
        /* a peer's number: clamp before converting (out of range is UB) */
        if (!(d > -9.2e18 && d < 9.2e18))
            return 0;
        return (int64_t)d;
    }
    return 0;
}

/* Python's int(): optional whitespace and sign, decimal digits; must fit int32. */
static bool parse_exit_value(const char *s, size_t n, int32_t *out)
{
    size_t i = 0;
    while (i < n && is_ws((uint8_t)s[i]))
        i++;
    while (n > i && is_ws((uint8_t)s[n - 1]))
        n--;
    bool neg = false;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        neg = s[i++] == '-';
    if (i == n)
        return false;
    int64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
        if (v > (int64_t)INT32_MAX + 1)
            return false;
    }
    v = neg ? -v : v;
    if (v > INT32_MAX || v < INT32_MIN)
        return false;
    *out = (int32_t)v;
    return true;
}

/* Keeps a printable, bounded copy of s for the exit reason. */
static void copy_reason(char *dst, size_t cap, const char *prefix, const char *s, size_t n)
{
    size_t k = (size_t)snprintf(dst, cap, "%s", prefix);
    if (k >= cap)
        return;
    for (size_t i = 0; i < n && k + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[k++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    dst[k] = '\0';
}

static void note_error(moat_bridge_decoder *d, moat_bridge_str name, moat_bridge_str value)
{
    /* The last error wins, as in the SDK. */
    d->saw_error = true;
    d->error_numeric = parse_exit_value(value.data, value.len, &d->error_code);
    if (!d->error_numeric) {
        char prefix[96];
        snprintf(prefix, sizeof(prefix),
                 "command failed: %.*s: ", (int)(name.len > 48 ? 48 : name.len), name.data);
        copy_reason(d->exit_reason, sizeof(d->exit_reason), prefix, value.data, value.len);
    }
}

/* Traceback items: null → none, strings as they are, other scalars as JSON. */
static moat_err emit_error(moat_bridge_decoder *d, json_t *root, int64_t ts,
                           moat_bridge_emit_fn emit, void *ud)
{
    json_t *err = json_object_get(root, "error");
    if (err != NULL && !json_is_object(err))
        err = NULL;
    moat_bridge_event ev = {.timestamp_ms = ts, .kind = MOAT_BRIDGE_EV_ERROR};
    ev.u.error.name = jstr(err, "ename");
    ev.u.error.value = jstr(err, "evalue");
    json_t *tb = err != NULL ? json_object_get(err, "traceback") : NULL;
    moat_bridge_str one;
    moat_bridge_str *items = NULL;
    char **owned = NULL;
    size_t count = 0, n_owned = 0;
    if (tb != NULL && json_is_array(tb) && json_array_size(tb) > 0) {
        size_t n = json_array_size(tb);
        items = calloc(n, sizeof(*items));
        owned = calloc(n, sizeof(*owned));
        if (items == NULL || owned == NULL) {
            free(items);
            free(owned);
            return MOAT_E_NOMEM;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *it = json_array_get(tb, i);
            if (json_is_string(it)) {
                items[count++] = (moat_bridge_str){json_string_value(it), json_string_length(it)};
            } else {
                char *s = json_dumps(it, JSON_ENCODE_ANY | JSON_COMPACT);
                if (s != NULL) {
                    owned[n_owned++] = s;
                    items[count++] = (moat_bridge_str){s, strlen(s)};
                }
            }
        }
        ev.u.error.traceback = items;
    } else if (tb != NULL && json_is_string(tb)) {
        one = (moat_bridge_str){json_string_value(tb), json_string_length(tb)};
        ev.u.error.traceback = &one;
        count = 1;
    }
    ev.u.error.traceback_count = count;
    note_error(d, ev.u.error.name, ev.u.error.value);
    emit_event(d, &ev, emit, ud);
    for (size_t i = 0; i < n_owned; i++)
        free(owned[i]);
    free(owned);
    free(items);
    return MOAT_OK;
}

static moat_err start_binary(moat_bridge_decoder *d, moat_bridge_stream stream, int64_t ts,
                             json_t *len, moat_status *st)
{
    if (!json_is_integer(len) || json_integer_value(len) < 1 ||
        json_integer_value(len) > (json_int_t)MOAT_BRIDGE_MAX_BINARY) {
        set_st(st, MOAT_CODE_UNAVAILABLE, "execd_protocol_error",
               "binary output frame with a len outside 1..65536");
        d->state = DEC_DONE;
        return MOAT_E_PROTO;
    }
    d->bin_stream = stream;
    d->bin_ts = ts;
    d->bin_need = (size_t)json_integer_value(len);
    d->bin_have = 0;
    d->state = DEC_PAYLOAD;
    return MOAT_OK;
}

/* One complete line (without its LF). */
static moat_err process_line(moat_bridge_decoder *d, const uint8_t *p, size_t n,
                             moat_bridge_emit_fn emit, void *ud, moat_status *st)
{
    while (n > 0 && is_ws(p[0])) {
        p++;
        n--;
    }
    while (n > 0 && is_ws(p[n - 1]))
        n--;
    if (n == 0)
        return MOAT_OK;
    if (p[0] == ':' || has_prefix(p, n, "event:") || has_prefix(p, n, "id:") ||
        has_prefix(p, n, "retry:")) {
        d->stats.skipped_lines++;
        return MOAT_OK;
    }
    if (has_prefix(p, n, "data:")) {
        p += 5;
        n -= 5;
        while (n > 0 && is_ws(p[0])) {
            p++;
            n--;
        }
        if (n == 0)
            return MOAT_OK;
    }
    if (p[0] != '{') {
        d->stats.skipped_lines++;
        return MOAT_OK;
    }
    json_t *root = json_loadb((const char *)p, n, JSON_ALLOW_NUL, NULL);
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        d->stats.skipped_lines++;
        return MOAT_OK;
    }
    moat_err err = MOAT_OK;
    json_t *jt = json_object_get(root, "type");
    int64_t ts = jint(root, "timestamp");
    if (jt == NULL || !json_is_string(jt)) {
        json_t *code = json_object_get(root, "code");
        if (code != NULL && json_is_string(code)) {
            /* execd appended its {"code","message"} error body to the stream. */
            d->stats.api_errors++;
            moat_bridge_event ev = {.timestamp_ms = ts, .kind = MOAT_BRIDGE_EV_ERROR};
            ev.u.error.name = jstr(root, "code");
            ev.u.error.value = jstr(root, "message");
            note_error(d, ev.u.error.name, ev.u.error.value);
            emit_event(d, &ev, emit, ud);
        } else {
            d->stats.skipped_lines++;
        }
        json_decref(root);
        return MOAT_OK;
    }
    const char *type = json_string_value(jt);
    moat_bridge_event ev = {.timestamp_ms = ts};
    if (strcmp(type, "stdout") == 0 || strcmp(type, "stderr") == 0) {
        moat_bridge_stream stream = type[3] == 'o' ? MOAT_BRIDGE_STDOUT : MOAT_BRIDGE_STDERR;
        json_t *len = json_object_get(root, "len");
        if (d->o.binary && len != NULL) {
            err = start_binary(d, stream, ts, len, st);
        } else {
            moat_bridge_str text = jstr(root, "text");
            if (text.len == 0) {
                d->stats.skipped_lines++;
            } else {
                ev.kind = MOAT_BRIDGE_EV_OUTPUT;
                ev.u.output.stream = stream;
                ev.u.output.data = (const uint8_t *)text.data;
                ev.u.output.len = text.len;
                emit_event(d, &ev, emit, ud);
            }
        }
    } else if (strcmp(type, "init") == 0) {
        ev.kind = MOAT_BRIDGE_EV_INIT;
        ev.u.init.execution_id = jstr(root, "text");
        emit_event(d, &ev, emit, ud);
    } else if (strcmp(type, "result") == 0) {
        ev.kind = MOAT_BRIDGE_EV_RESULT;
        json_t *results = json_object_get(root, "results");
        ev.u.result.text = jstr(json_is_object(results) ? results : NULL, "text");
        emit_event(d, &ev, emit, ud);
    } else if (strcmp(type, "error") == 0) {
        err = emit_error(d, root, ts, emit, ud);
    } else if (strcmp(type, "execution_complete") == 0) {
        d->saw_complete = true;
        ev.kind = MOAT_BRIDGE_EV_COMPLETE;
        int64_t t = jint(root, "execution_time");
        ev.u.complete.execution_time_ms = t > 0 ? (uint64_t)t : 0;
        emit_event(d, &ev, emit, ud);
    } else {
        /* ping, status, execution_count and types this build does not know */
        d->stats.skipped_lines++;
    }
    json_decref(root);
    return err;
}

static moat_err oversize(moat_bridge_decoder *d, moat_status *st)
{
    d->stats.oversize_lines++;
    moat_buf_reset(&d->line);
    if (d->o.oversize == MOAT_BRIDGE_OVERSIZE_SKIP) {
        moat_log(MOAT_LOG_WARN, "bridge_sse_line_skipped", "max_line=%zu", d->o.max_line);
        d->skipping = true;
        return MOAT_OK;
    }
    if (st != NULL)
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "sse_line_too_long",
                        "execd sent an SSE line longer than %zu bytes", d->o.max_line);
    d->state = DEC_DONE;
    return MOAT_E_TOO_BIG;
}

static void emit_binary(moat_bridge_decoder *d, const uint8_t *data, moat_bridge_emit_fn emit,
                        void *ud)
{
    moat_bridge_event ev = {.timestamp_ms = d->bin_ts, .kind = MOAT_BRIDGE_EV_OUTPUT};
    ev.u.output.stream = d->bin_stream;
    ev.u.output.data = data;
    ev.u.output.len = d->bin_need;
    emit_event(d, &ev, emit, ud);
    d->state = DEC_TRAILER;
    d->trailer_left = 2;
}

moat_err moat_bridge_decoder_feed(moat_bridge_decoder *d, const uint8_t *data, size_t len,
                                  moat_bridge_emit_fn emit, void *ud, moat_status *st)
{
    if (d->state == DEC_DONE)
        return MOAT_E_STATE;
    size_t i = 0;
    while (i < len) {
        if (d->stopped)
            return MOAT_E_CLOSED;
        if (d->state == DEC_PAYLOAD) {
            size_t want = d->bin_need - d->bin_have;
            if (d->bin_have == 0 && len - i >= want) {
                emit_binary(d, data + i, emit, ud); /* the whole frame is here: no copy */
                i += want;
                continue;
            }
            if (d->bin_buf == NULL) {
                d->bin_buf = malloc(MOAT_BRIDGE_MAX_BINARY);
                if (d->bin_buf == NULL)
                    return MOAT_E_NOMEM;
            }
            size_t take = len - i < want ? len - i : want;
            memcpy(d->bin_buf + d->bin_have, data + i, take);
            d->bin_have += take;
            i += take;
            if (d->bin_have == d->bin_need)
                emit_binary(d, d->bin_buf, emit, ud);
            continue;
        }
        if (d->state == DEC_TRAILER) {
            if (data[i] != '\n') {
                set_st(st, MOAT_CODE_UNAVAILABLE, "execd_protocol_error",
                       "binary output frame not followed by a blank line");
                d->state = DEC_DONE;
                return MOAT_E_PROTO;
            }
            i++;
            if (--d->trailer_left == 0)
                d->state = DEC_LINE;
            continue;
        }
        const uint8_t *nl = memchr(data + i, '\n', len - i);
        size_t seg = nl != NULL ? (size_t)(nl - (data + i)) : len - i;
        moat_err err = MOAT_OK;
        if (d->skipping) {
            if (nl != NULL)
                d->skipping = false;
        } else if (nl != NULL && d->line.len == 0) {
            if (seg > d->o.max_line)
                err = oversize(d, st);
            else
                err = process_line(d, data + i, seg, emit, ud, st);
            if (err == MOAT_OK && d->skipping)
                d->skipping = false; /* the oversize line ended right here */
        } else {
            if (moat_buf_append(&d->line, data + i, seg) != MOAT_OK) {
                err = oversize(d, st);
                if (err == MOAT_OK && nl != NULL)
                    d->skipping = false;
            } else if (nl != NULL) {
                err = process_line(d, d->line.data, d->line.len, emit, ud, st);
                moat_buf_reset(&d->line);
            }
        }
        if (err != MOAT_OK)
            return err;
        i += seg + (nl != NULL ? 1 : 0);
    }
    return d->stopped ? MOAT_E_CLOSED : MOAT_OK;
}

static void emit_exit(moat_bridge_decoder *d, const char *fallback, moat_bridge_emit_fn emit,
                      void *ud)
{
    moat_bridge_event ev = {.kind = MOAT_BRIDGE_EV_EXIT};
    const char *reason = NULL;
    d->exited = true;
    if (d->saw_error) {
        if (d->error_numeric) {
            ev.u.exit.known = true;
            ev.u.exit.code = d->error_code;
            ev.u.exit.timed_out = d->o.timeout_set && d->error_code == -1;
        } else {
            reason = d->exit_reason;
        }
    } else if (d->o.background) {
        reason = "background command: poll GetCommandStatus for its exit code";
    } else if (d->saw_complete) {
        ev.u.exit.known = true;
        ev.u.exit.code = 0;
    } else {
        reason = fallback;
    }
    if (!ev.u.exit.known)
        ev.u.exit.unknown_reason = (moat_bridge_str){reason, strlen(reason)};
    emit_event(d, &ev, emit, ud);
}

moat_err moat_bridge_decoder_finish(moat_bridge_decoder *d, moat_bridge_emit_fn emit, void *ud,
                                    moat_status *st)
{
    if (d->state == DEC_DONE)
        return MOAT_E_STATE;
    bool truncated = false;
    if (d->state != DEC_LINE) {
        truncated = true;
    } else if (d->line.len > 0 && !d->skipping) {
        /* execd's appended error object has no LF after it */
        uint64_t before = d->stats.events;
        moat_err err = process_line(d, d->line.data, d->line.len, emit, ud, st);
        moat_buf_reset(&d->line);
        if (err != MOAT_OK) {
            /* A malformed last line still ends the execution with its EXIT. */
            d->state = DEC_DONE;
            emit_exit(d, st->message, emit, ud);
            return err;
        }
        truncated = d->stats.events == before;
    }
    d->state = DEC_DONE;
    bool final = d->saw_complete || d->saw_error;
    if (truncated && !final) {
        emit_exit(d, "execd's stream stopped inside an event", emit, ud);
        set_st(st, MOAT_CODE_UNAVAILABLE, "execd_stream_truncated",
               "execd's stream stopped inside an event");
        return MOAT_E_PROTO;
    }
    emit_exit(d, "execd's stream ended without a completion or error event", emit, ud);
    return MOAT_OK;
}

bool moat_bridge_decoder_abort(moat_bridge_decoder *d, const char *reason, moat_bridge_emit_fn emit,
                               void *ud)
{
    bool final = d->saw_complete || d->saw_error;
    d->state = DEC_DONE;
    if (!d->exited)
        emit_exit(d, reason, emit, ud);
    return final;
}

size_t moat_bridge_event_cost(const moat_bridge_event *ev)
{
    size_t n = 16;
    switch (ev->kind) {
    case MOAT_BRIDGE_EV_INIT:
        n += ev->u.init.execution_id.len;
        break;
    case MOAT_BRIDGE_EV_OUTPUT:
        n += ev->u.output.len;
        break;
    case MOAT_BRIDGE_EV_RESULT:
        n += ev->u.result.text.len;
        break;
    case MOAT_BRIDGE_EV_ERROR:
        n += ev->u.error.name.len + ev->u.error.value.len;
        for (size_t i = 0; i < ev->u.error.traceback_count; i++)
            n += ev->u.error.traceback[i].len;
        break;
    case MOAT_BRIDGE_EV_EXIT:
        n += ev->u.exit.unknown_reason.len;
        break;
    default:
        break;
    }
    return n > MOAT_BRIDGE_MAX_EVENT_COST ? MOAT_BRIDGE_MAX_EVENT_COST : n;
}
