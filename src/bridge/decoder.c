/* The execd SSE decoder: line splitting with a hard line limit, both framings
 * (`data: {json}` and execd's bare `{json}`), the seed's skip rules, the
 * binary-safe output frames of moat-execd, and the mapping to events with the
 * seed's exit-code rule. No I/O. */
#include "internal.h"

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
    bool error_timeout; /* moat-execd said the run's timeout killed it */
    int64_t final_ts;   /* execd's timestamp of the last completion or error, 0 if none */
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

size_t moat_bridge_decoder_buffer_bytes(const moat_bridge_decoder *d)
{
    return d->line.cap + (d->bin_buf != NULL ? MOAT_BRIDGE_MAX_BINARY : 0);
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

static moat_bridge_str jstr(const cJSON *v)
{
    if (cJSON_IsString(v) && v->valuestring != NULL)
        return (moat_bridge_str){v->valuestring, strlen(v->valuestring)};
    return (moat_bridge_str){"", 0};
}

/* A peer's number as int64, 0 when absent. Doubles are truncated and clamped
 * first (out of range is UB). cJSON holds numbers as doubles: timestamps and
 * durations in ms stay far below 2^53, where every integer is exact. */
static int64_t jint(const cJSON *v)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!(d > -9.2e18 && d < 9.2e18))
        return 0;
    return (int64_t)d;
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

static void note_error(moat_bridge_decoder *d, moat_bridge_str name, moat_bridge_str value,
                       moat_bridge_str cause, int64_t ts)
{
    /* The last error wins, as in the SDK. */
    d->saw_error = true;
    d->final_ts = ts;
    d->error_timeout = cause.len == 7 && memcmp(cause.data, "timeout", 7) == 0;
    d->error_numeric = parse_exit_value(value.data, value.len, &d->error_code);
    if (!d->error_numeric) {
        char prefix[96];
        snprintf(prefix, sizeof(prefix),
                 "command failed: %.*s: ", (int)(name.len > 48 ? 48 : name.len), name.data);
        copy_reason(d->exit_reason, sizeof(d->exit_reason), prefix, value.data, value.len);
    }
}

/* The last member named key (a repeated key keeps its last value, as the
 * decoder always read them), or NULL. */
static const cJSON *member(const cJSON *obj, const char *key)
{
    const cJSON *found = NULL;
    if (cJSON_IsObject(obj))
        for (const cJSON *it = obj->child; it != NULL; it = it->next)
            if (it->string != NULL && strcmp(it->string, key) == 0)
                found = it;
    return found;
}

/* Traceback items: null → none, strings as they are, other values as JSON. */
static moat_err emit_error(moat_bridge_decoder *d, const cJSON *err, int64_t ts,
                           moat_bridge_emit_fn emit, void *ud)
{
    if (!cJSON_IsObject(err))
        err = NULL;
    moat_bridge_event ev = {.timestamp_ms = ts, .kind = MOAT_BRIDGE_EV_ERROR};
    ev.u.error.name = jstr(member(err, "ename"));
    ev.u.error.value = jstr(member(err, "evalue"));
    const cJSON *tb = member(err, "traceback");
    moat_bridge_str one;
    moat_bridge_str *items = NULL;
    char **owned = NULL;
    size_t count = 0, n_owned = 0;
    int n = cJSON_IsArray(tb) ? cJSON_GetArraySize(tb) : 0;
    if (n > 0) {
        items = calloc((size_t)n, sizeof(*items));
        owned = calloc((size_t)n, sizeof(*owned));
        if (items == NULL || owned == NULL) {
            free(items);
            free(owned);
            return MOAT_E_NOMEM;
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, tb)
        {
            if (cJSON_IsString(it)) {
                items[count++] = jstr(it);
            } else {
                char *s = cJSON_PrintUnformatted(it);
                if (s != NULL) {
                    owned[n_owned++] = s;
                    items[count++] = (moat_bridge_str){s, strlen(s)};
                }
            }
        }
        ev.u.error.traceback = items;
    } else if (cJSON_IsString(tb)) {
        one = jstr(tb);
        ev.u.error.traceback = &one;
        count = 1;
    }
    ev.u.error.traceback_count = count;
    note_error(d, ev.u.error.name, ev.u.error.value, jstr(member(err, "cause")), ts);
    emit_event(d, &ev, emit, ud);
    for (size_t i = 0; i < n_owned; i++)
        cJSON_free(owned[i]);
    free(owned);
    free(items);
    return MOAT_OK;
}

static moat_err start_binary(moat_bridge_decoder *d, moat_bridge_stream stream, int64_t ts,
                             const cJSON *len, moat_status *st)
{
    int64_t n = 0;
    if (!moat_json_int_value(len, &n) || n < 1 || n > (int64_t)MOAT_BRIDGE_MAX_BINARY) {
        set_st(st, MOAT_CODE_UNAVAILABLE, "execd_protocol_error",
               "binary output frame with a len outside 1..65536");
        d->state = DEC_DONE;
        return MOAT_E_PROTO;
    }
    d->bin_stream = stream;
    d->bin_ts = ts;
    d->bin_need = (size_t)n;
    d->bin_have = 0;
    d->state = DEC_PAYLOAD;
    return MOAT_OK;
}

/* The top-level members the mapping reads, found in one walk over the event
 * object instead of one lookup each. */
typedef struct members {
    const cJSON *type, *timestamp, *text, *len, *results, *error, *execution_time, *code, *message;
} members;

static void find_members(const cJSON *root, members *m)
{
    memset(m, 0, sizeof(*m));
    for (const cJSON *it = root->child; it != NULL; it = it->next) {
        const char *k = it->string;
        if (k == NULL)
            continue;
        switch (k[0]) {
        case 't':
            if (strcmp(k, "type") == 0)
                m->type = it;
            else if (strcmp(k, "text") == 0)
                m->text = it;
            else if (strcmp(k, "timestamp") == 0)
                m->timestamp = it;
            break;
        case 'l':
            if (strcmp(k, "len") == 0)
                m->len = it;
            break;
        case 'r':
            if (strcmp(k, "results") == 0)
                m->results = it;
            break;
        case 'e':
            if (strcmp(k, "error") == 0)
                m->error = it;
            else if (strcmp(k, "execution_time") == 0)
                m->execution_time = it;
            break;
        case 'c':
            if (strcmp(k, "code") == 0)
                m->code = it;
            break;
        case 'm':
            if (strcmp(k, "message") == 0)
                m->message = it;
            break;
        default:
            break;
        }
    }
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
    /* Line mode is UTF-8 text: a \u0000 arrives as U+FFFD (exact bytes are
     * binary-safe mode's job). */
    cJSON *root = p[0] == '{' ? moat_json_parse((const char *)p, n, MOAT_JSON_NUL_REPLACE) : NULL;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        d->stats.skipped_lines++;
        return MOAT_OK;
    }
    members m;
    find_members(root, &m);
    moat_err err = MOAT_OK;
    int64_t ts = jint(m.timestamp);
    if (!cJSON_IsString(m.type) || m.type->valuestring == NULL) {
        if (cJSON_IsString(m.code)) {
            /* execd appended its {"code","message"} error body to the stream. */
            d->stats.api_errors++;
            moat_bridge_event ev = {.timestamp_ms = ts, .kind = MOAT_BRIDGE_EV_ERROR};
            ev.u.error.name = jstr(m.code);
            ev.u.error.value = jstr(m.message);
            note_error(d, ev.u.error.name, ev.u.error.value, (moat_bridge_str){"", 0}, ts);
            emit_event(d, &ev, emit, ud);
        } else {
            d->stats.skipped_lines++;
        }
        cJSON_Delete(root);
        return MOAT_OK;
    }
    const char *type = m.type->valuestring;
    moat_bridge_event ev = {.timestamp_ms = ts};
    if (strcmp(type, "stdout") == 0 || strcmp(type, "stderr") == 0) {
        moat_bridge_stream stream = type[3] == 'o' ? MOAT_BRIDGE_STDOUT : MOAT_BRIDGE_STDERR;
        if (d->o.binary && m.len != NULL) {
            err = start_binary(d, stream, ts, m.len, st);
        } else {
            moat_bridge_str text = jstr(m.text);
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
        ev.u.init.execution_id = jstr(m.text);
        emit_event(d, &ev, emit, ud);
    } else if (strcmp(type, "result") == 0) {
        ev.kind = MOAT_BRIDGE_EV_RESULT;
        ev.u.result.text = jstr(member(m.results, "text"));
        emit_event(d, &ev, emit, ud);
    } else if (strcmp(type, "error") == 0) {
        err = emit_error(d, m.error, ts, emit, ud);
    } else if (strcmp(type, "execution_complete") == 0) {
        d->saw_complete = true;
        d->final_ts = ts;
        ev.kind = MOAT_BRIDGE_EV_COMPLETE;
        int64_t t = jint(m.execution_time);
        ev.u.complete.execution_time_ms = t > 0 ? (uint64_t)t : 0;
        emit_event(d, &ev, emit, ud);
    } else {
        /* ping, status, execution_count and types this build does not know */
        d->stats.skipped_lines++;
    }
    cJSON_Delete(root);
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
    /* When the process ended, as execd saw it; else (an execd that stamps nothing, a stream cut
     * short) when moatd learnt of the end. */
    moat_bridge_event ev = {.kind = MOAT_BRIDGE_EV_EXIT,
                            .timestamp_ms = d->final_ts != 0 ? d->final_ts : moat_time_now_ms()};
    const char *reason = NULL;
    d->exited = true;
    if (d->saw_error) {
        if (d->error_numeric) {
            ev.u.exit.known = true;
            ev.u.exit.code = d->error_code;
            /* Only execd knows why a process died: a self-inflicted or OOM kill
             * under a timeout is not a timeout. */
            ev.u.exit.timed_out = d->o.timeout_set && d->error_code == -1 && d->error_timeout;
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
