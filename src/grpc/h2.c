/* One HTTP/2 server connection carrying gRPC calls, on libnghttp2's server session: request
 * headers checked, DATA split into messages, responses queued per call until the windows let
 * them out, Ends as trailers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "grpc/h2.h"

/* A response message waiting for the windows. */
typedef struct out_block {
    struct out_block *next;
    uint8_t *data;
    size_t len, off;
} out_block;

/* What a call's trailers say, kept from its End until its queue has gone out. */
typedef struct trailers {
    char status[12];
    char message[MOAT_GRPC_MESSAGE_MAX];
    char details[MOAT_GRPC_DETAILS_MAX];
} trailers;

typedef struct h2_stream {
    moat_grpc_h2 *h;
    int32_t id;
    void *call;             /* the owner's, once opened */
    moat_grpc_request *req; /* while its headers arrive */
    moat_grpc_decoder dec;
    uint64_t messages; /* request messages delivered */
    out_block *qhead, *qtail;
    size_t queued;
    trailers *tail; /* set by its End when messages still wait */
    bool headers_sent, ended, deferred, closed, broken;
    /* A client-streaming call: its request window comes back as the owner uses its input
     * (moat_grpc_h2_consume), not as bytes are decoded. */
    bool paced;
    struct h2_stream *next, *prev;
} h2_stream;

struct moat_grpc_h2 {
    nghttp2_session *session;
    moat_grpc_h2_limits limits;
    moat_grpc_h2_callbacks cbs;
    void *ud;
    h2_stream *streams;
    size_t calls;
    size_t queued; /* over every stream's queue */
};

static h2_stream *stream_get(moat_grpc_h2 *h, int32_t id)
{
    return nghttp2_session_get_stream_user_data(h->session, id);
}

static void stream_free(h2_stream *s)
{
    moat_grpc_h2 *h = s->h;
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    while (s->qhead != NULL) {
        out_block *b = s->qhead;
        s->qhead = b->next;
        free(b->data);
        free(b);
    }
    h->queued -= s->queued;
    moat_grpc_decoder_free(&s->dec);
    free(s->req);
    free(s->tail);
    free(s);
}

/* The owner lets go of the call: it is never mentioned again. */
static void stream_release_call(h2_stream *s)
{
    if (s->call == NULL)
        return;
    void *call = s->call;
    s->call = NULL;
    s->h->calls--;
    s->h->cbs.closed(s->h->ud, call);
}

static void stream_abort(h2_stream *s, moat_code code, const char *reason, const char *msg)
{
    if (s->call == NULL || s->ended)
        return;
    moat_status st;
    moat_status_set(&st, code, reason, "%s", msg);
    s->h->cbs.abort(s->h->ud, s->call, &st);
}

#define NV(name, value)                                                                            \
    {                                                                                              \
        (uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, strlen(value),                    \
            NGHTTP2_NV_FLAG_NO_COPY_NAME                                                           \
    }

static ssize_t read_queue(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                          uint32_t *flags, nghttp2_data_source *source, void *ud);

/* The response's HEADERS, before its first message. */
static int submit_headers(h2_stream *s)
{
    nghttp2_nv nva[] = {NV(":status", "200"), NV("content-type", "application/grpc")};
    nghttp2_data_provider prd = {.source = {.ptr = s}, .read_callback = read_queue};
    s->headers_sent = true;
    return nghttp2_submit_response(s->h->session, s->id, nva, sizeof(nva) / sizeof(nva[0]), &prd);
}

static void fill_trailers(trailers *t, const moat_status *st)
{
    snprintf(t->status, sizeof(t->status), "%d", (int)st->code);
    if (moat_grpc_percent_encode(st->message, strlen(st->message), t->message,
                                 sizeof(t->message)) != MOAT_OK ||
        moat_grpc_status_details(st, t->details, sizeof(t->details)) != MOAT_OK)
        t->details[0] = '\0';
}

/* nv entries of t: grpc-status, then grpc-message and grpc-status-details-bin when they say
 * something. Returns how many. */
static size_t trailer_nv(const trailers *t, nghttp2_nv *nv)
{
    size_t n = 0;
    nv[n++] = (nghttp2_nv)NV("grpc-status", t->status);
    if (t->message[0] != '\0')
        nv[n++] = (nghttp2_nv)NV("grpc-message", t->message);
    if (t->details[0] != '\0')
        nv[n++] = (nghttp2_nv)NV("grpc-status-details-bin", t->details);
    return n;
}

static ssize_t read_queue(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                          uint32_t *flags, nghttp2_data_source *source, void *ud)
{
    (void)ud;
    h2_stream *s = source->ptr;
    size_t n = 0;
    while (n < length && s->qhead != NULL) {
        out_block *b = s->qhead;
        size_t take = b->len - b->off;
        if (take > length - n)
            take = length - n;
        memcpy(buf + n, b->data + b->off, take);
        b->off += take;
        n += take;
        if (b->off == b->len) {
            s->qhead = b->next;
            if (s->qhead == NULL)
                s->qtail = NULL;
            free(b->data);
            free(b);
        }
    }
    s->queued -= n;
    s->h->queued -= n;
    if (s->qhead == NULL && s->tail != NULL) {
        /* Trailers end the stream; the DATA does not. */
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_nv nv[3];
        size_t nn = trailer_nv(s->tail, nv);
        if (nghttp2_submit_trailer(session, id, nv, nn) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        return (ssize_t)n;
    }
    if (n == 0) {
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

static void resume(h2_stream *s)
{
    if (!s->deferred)
        return;
    s->deferred = false;
    nghttp2_session_resume_data(s->h->session, s->id);
}

moat_err moat_grpc_h2_send(moat_grpc_h2 *h, int32_t stream_id, uint8_t *block, size_t len)
{
    h2_stream *s = stream_get(h, stream_id);
    out_block *b = s != NULL && !s->ended && !s->closed ? malloc(sizeof(*b)) : NULL;
    if (b == NULL) {
        free(block);
        return s == NULL || s->ended || s->closed ? MOAT_E_STATE : MOAT_E_NOMEM;
    }
    *b = (out_block){NULL, block, len, 0};
    if (s->qtail != NULL)
        s->qtail->next = b;
    else
        s->qhead = b;
    s->qtail = b;
    s->queued += len;
    h->queued += len;
    if (!s->headers_sent) {
        if (submit_headers(s) != 0)
            return MOAT_E_NOMEM;
        return MOAT_OK;
    }
    resume(s);
    return MOAT_OK;
}

void moat_grpc_h2_end(moat_grpc_h2 *h, int32_t stream_id, const moat_status *st)
{
    h2_stream *s = stream_get(h, stream_id);
    if (s == NULL || s->ended)
        return;
    s->ended = true;
    if (s->closed)
        return;
    if (st->code == MOAT_CODE_CANCELLED || st->code == MOAT_CODE_DEADLINE_EXCEEDED) {
        /* Nobody will read what a cancelled call still had queued. */
        while (s->qhead != NULL) {
            out_block *b = s->qhead;
            s->qhead = b->next;
            free(b->data);
            free(b);
        }
        s->qtail = NULL;
        h->queued -= s->queued;
        s->queued = 0;
    }
    trailers *t = malloc(sizeof(*t));
    if (t == NULL) {
        nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    fill_trailers(t, st);
    if (s->headers_sent) {
        s->tail = t;
        if (s->qhead == NULL)
            s->deferred = true; /* the read callback sends the trailers */
        resume(s);
        return;
    }
    /* Trailers-only: one HEADERS frame with the status, ending the stream. */
    nghttp2_nv nv[5] = {NV(":status", "200"), NV("content-type", "application/grpc")};
    size_t n = 2 + trailer_nv(t, nv + 2);
    s->headers_sent = true;
    nghttp2_submit_response(h->session, stream_id, nv, n, NULL);
    free(t);
}

uint32_t moat_grpc_h2_credit(moat_grpc_h2 *h, int32_t stream_id)
{
    h2_stream *s = stream_get(h, stream_id);
    if (s == NULL || s->ended || s->closed)
        return 0;
    int32_t sw = nghttp2_session_get_stream_remote_window_size(h->session, stream_id);
    int32_t cw = nghttp2_session_get_remote_window_size(h->session);
    int64_t w = sw < cw ? sw : cw;
    w -= (int64_t)s->queued;
    return w > 0 ? (uint32_t)w : 0;
}

size_t moat_grpc_h2_queued(moat_grpc_h2 *h, int32_t stream_id)
{
    h2_stream *s = stream_get(h, stream_id);
    return s != NULL ? s->queued : 0;
}

size_t moat_grpc_h2_queued_total(const moat_grpc_h2 *h)
{
    return h->queued;
}

size_t moat_grpc_h2_calls(const moat_grpc_h2 *h)
{
    return h->calls;
}

/* ---- nghttp2's callbacks -------------------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    moat_grpc_h2 *h = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h2_stream *s = calloc(1, sizeof(*s));
    moat_grpc_request *req = s != NULL ? malloc(sizeof(*req)) : NULL;
    if (req == NULL) {
        free(s);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets this stream alone */
    }
    s->h = h;
    s->id = frame->hd.stream_id;
    s->req = req;
    moat_grpc_request_init(req, h->limits.max_header_list);
    moat_grpc_decoder_init(&s->dec, h->limits.max_message);
    s->next = h->streams;
    if (h->streams != NULL)
        h->streams->prev = s;
    h->streams = s;
    nghttp2_session_set_stream_user_data(session, s->id, s);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* a client's trailers say nothing moatd uses */
    h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s != NULL && s->req != NULL)
        moat_grpc_request_header(s->req, name, namelen, value, valuelen);
    return 0;
}

/* Answers a request that does not open: an HTTP status alone, or a gRPC status trailers-only. */
static void refuse(h2_stream *s, moat_grpc_verdict verdict, int http, const moat_status *st)
{
    moat_grpc_h2 *h = s->h;
    if (h->cbs.refused != NULL)
        h->cbs.refused(h->ud, s->id, st, http);
    s->broken = true;
    if (verdict == MOAT_GRPC_HTTP_ERROR) {
        char status[8];
        snprintf(status, sizeof(status), "%d", http);
        nghttp2_nv nv[] = {NV(":status", status)};
        s->ended = s->headers_sent = true;
        nghttp2_submit_response(h->session, s->id, nv, 1, NULL);
        return;
    }
    moat_grpc_h2_end(h, s->id, st);
}

static void headers_done(h2_stream *s)
{
    moat_grpc_h2 *h = s->h;
    int http = 200;
    moat_status st;
    moat_grpc_verdict v = moat_grpc_request_finish(s->req, h->limits.token_required,
                                                   h->cbs.token_ok, h->ud, &http, &st);
    if (v == MOAT_GRPC_ACCEPT) {
        s->call = h->cbs.open(h->ud, s->id, s->req, &st);
        if (s->call == NULL)
            v = MOAT_GRPC_GRPC_ERROR;
        else
            h->calls++;
        s->paced = s->call != NULL && s->req->method != NULL && s->req->method->client_streaming;
    }
    free(s->req);
    s->req = NULL;
    if (v != MOAT_GRPC_ACCEPT)
        refuse(s, v, http, &st);
}

/* The client half-closed: a request cut inside a message cannot run; otherwise the owner
 * hears how many it sent. */
static void request_complete(h2_stream *s)
{
    if (moat_grpc_decoder_partial(&s->dec))
        stream_abort(s, MOAT_CODE_INTERNAL, "truncated_message",
                     "the request ended inside a message");
    else if (s->call != NULL && !s->ended)
        s->h->cbs.half_closed(s->h->ud, s->call, s->messages);
}

static void all_writable(moat_grpc_h2 *h)
{
    for (h2_stream *s = h->streams; s != NULL; s = s->next)
        if (s->call != NULL && !s->ended)
            h->cbs.writable(h->ud, s->call);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    moat_grpc_h2 *h = ud;
    h2_stream *s = frame->hd.stream_id != 0
                       ? nghttp2_session_get_stream_user_data(session, frame->hd.stream_id)
                       : NULL;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (s != NULL && s->req != NULL)
            headers_done(s);
        break;
    case NGHTTP2_WINDOW_UPDATE:
        if (frame->hd.stream_id == 0)
            all_writable(h);
        else if (s != NULL && s->call != NULL && !s->ended)
            h->cbs.writable(h->ud, s->call);
        return 0;
    case NGHTTP2_SETTINGS:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) == 0)
            all_writable(h);
        return 0;
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    if (s != NULL && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0 && !s->broken)
        request_complete(s);
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    (void)flags;
    moat_grpc_h2 *h = ud;
    h2_stream *s = nghttp2_session_get_stream_user_data(session, id);
    /* Windows come back by hand (no automatic updates): the connection's at once, so one call's
     * slow input holds no other; a stream's at once unless its input is paced, where only the
     * messages' prefixes are given back here and their payloads as the owner uses them. */
    nghttp2_session_consume_connection(session, len);
    bool paced = s != NULL && s->paced && s->call != NULL && !s->ended && !s->broken;
    if (!paced)
        nghttp2_session_consume_stream(session, id, len);
    while (s != NULL && len > 0 && s->call != NULL && !s->ended && !s->broken) {
        size_t used = 0;
        moat_slice msg;
        moat_err err = moat_grpc_decoder_feed(&s->dec, data, len, &used, &msg);
        data += used;
        len -= used;
        if (err == MOAT_E_AGAIN)
            break;
        if (err != MOAT_OK) {
            s->broken = true;
            const char *why = moat_grpc_decoder_reason(&s->dec);
            if (err == MOAT_E_TOO_BIG)
                stream_abort(s, MOAT_CODE_RESOURCE_EXHAUSTED, "message_too_large", why);
            else
                stream_abort(
                    s, MOAT_CODE_INTERNAL,
                    err == MOAT_E_UNSUPPORTED ? "compressed_without_encoding" : "bad_message", why);
            break;
        }
        s->messages++;
        if (paced)
            nghttp2_session_consume_stream(session, id, MOAT_GRPC_PREFIX_SIZE);
        h->cbs.message(h->ud, s->call, msg.data, msg.len);
    }
    /* The rest of a paced stream that broke or ended is nobody's input. */
    if (paced && len > 0 && (s->ended || s->broken))
        nghttp2_session_consume_stream(session, id, len);
    return 0;
}

void moat_grpc_h2_consume(moat_grpc_h2 *h, int32_t stream_id, size_t n)
{
    if (n > 0 && nghttp2_session_find_stream(h->session, stream_id) != NULL)
        nghttp2_session_consume_stream(h->session, stream_id, n);
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t error_code, void *ud)
{
    (void)ud;
    h2_stream *s = nghttp2_session_get_stream_user_data(session, id);
    if (s == NULL)
        return 0;
    s->closed = true;
    if (!s->ended) {
        char msg[96];
        snprintf(msg, sizeof(msg), "stream reset by the client (%s)",
                 nghttp2_http2_strerror(error_code));
        stream_abort(s, MOAT_CODE_CANCELLED, "cancelled", msg);
    }
    stream_release_call(s);
    nghttp2_session_set_stream_user_data(session, id, NULL);
    stream_free(s);
    return 0;
}

/* DATA frames as large as the client's SETTINGS_MAX_FRAME_SIZE and the windows allow (nghttp2
 * sends 16 KiB otherwise): fewer frames for a stream of output. */
static ssize_t data_length(nghttp2_session *session, uint8_t frame_type, int32_t stream_id,
                           int32_t session_window, int32_t stream_window, uint32_t max_frame,
                           void *ud)
{
    (void)session;
    (void)frame_type;
    (void)stream_id;
    (void)ud;
    int64_t n = session_window < stream_window ? session_window : stream_window;
    if (n > (int64_t)max_frame)
        n = max_frame;
    return n > 0 ? (ssize_t)n : 1;
}

/* Once its End has gone out, a call whose client is still sending is told to stop, as gRPC
 * servers do (RST_STREAM NO_ERROR). */
static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    (void)ud;
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0 &&
        nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id) == 0)
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_NO_ERROR);
    return 0;
}

moat_grpc_h2 *moat_grpc_h2_new(const moat_grpc_h2_limits *limits, const moat_grpc_h2_callbacks *cbs,
                               void *ud)
{
    moat_grpc_h2 *h = calloc(1, sizeof(*h));
    nghttp2_session_callbacks *callbacks = NULL;
    if (h == NULL || nghttp2_session_callbacks_new(&callbacks) != 0) {
        free(h);
        return NULL;
    }
    h->limits = *limits;
    h->cbs = *cbs;
    h->ud = ud;
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, on_frame_send);
    nghttp2_session_callbacks_set_data_source_read_length_callback(callbacks, data_length);
    nghttp2_option *option = NULL;
    int rv = nghttp2_option_new(&option);
    if (rv == 0) {
        nghttp2_option_set_no_auto_window_update(option, 1);
        rv = nghttp2_session_server_new2(&h->session, callbacks, h, option);
        nghttp2_option_del(option);
    }
    nghttp2_session_callbacks_del(callbacks);
    if (rv != 0) {
        free(h);
        return NULL;
    }
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits->max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, limits->initial_window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, limits->max_header_list},
    };
    if (nghttp2_submit_settings(h->session, NGHTTP2_FLAG_NONE, settings,
                                sizeof(settings) / sizeof(settings[0])) != 0) {
        nghttp2_session_del(h->session);
        free(h);
        return NULL;
    }
    return h;
}

void moat_grpc_h2_free(moat_grpc_h2 *h)
{
    if (h == NULL)
        return;
    while (h->streams != NULL) {
        h2_stream *s = h->streams;
        s->closed = true;
        stream_abort(s, MOAT_CODE_CANCELLED, "connection_closed", "connection closed");
        stream_release_call(s);
        stream_free(s);
    }
    nghttp2_session_del(h->session);
    free(h);
}

moat_err moat_grpc_h2_recv(moat_grpc_h2 *h, const uint8_t *data, size_t len, const char **why)
{
    ssize_t rv = nghttp2_session_mem_recv(h->session, data, len);
    if (rv < 0) {
        *why = nghttp2_strerror((int)rv);
        return MOAT_E_PROTO;
    }
    return MOAT_OK;
}

moat_err moat_grpc_h2_pull(moat_grpc_h2 *h, const uint8_t **data, size_t *len)
{
    ssize_t n = nghttp2_session_mem_send(h->session, data);
    if (n < 0) {
        *len = 0;
        return n == NGHTTP2_ERR_NOMEM ? MOAT_E_NOMEM : MOAT_E_PROTO;
    }
    *len = (size_t)n;
    return MOAT_OK;
}

bool moat_grpc_h2_alive(const moat_grpc_h2 *h)
{
    return nghttp2_session_want_read(h->session) || nghttp2_session_want_write(h->session);
}

void moat_grpc_h2_go_away(moat_grpc_h2 *h, uint32_t error_code)
{
    nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(h->session), error_code, NULL, 0);
}
