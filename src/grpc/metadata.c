/* A gRPC request's headers, checked as gRPC's HTTP/2 spec asks, and grpc-status-details-bin. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "google/rpc/error_details.pb-c.h"
#include "google/rpc/status.pb-c.h"
#include "grpc/grpc.h"
#include "grpc/reflection.h"

/* HTTP/2's accounting of a header list (RFC 9113 6.5.2): name, value and 32 per field. */
#define HEADER_OVERHEAD 32

void moat_grpc_request_init(moat_grpc_request *r, size_t max_header_bytes)
{
    memset(r, 0, sizeof(*r));
    r->max_header_bytes = max_header_bytes;
}

static bool is(const uint8_t *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n == l && memcmp(p, lit, l) == 0;
}

/* application/grpc, application/grpc+proto, either with parameters after ';'. Other subtypes
 * (+json) name an encoding moatd does not speak. */
static bool content_type_ok(const uint8_t *v, size_t n)
{
    static const char *const accepted[] = {"application/grpc", "application/grpc+proto"};
    for (size_t i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++) {
        size_t l = strlen(accepted[i]);
        if (n >= l && strncasecmp((const char *)v, accepted[i], l) == 0 &&
            (n == l || v[l] == ';' || v[l] == ' '))
            return true;
    }
    return false;
}

static void take_authorization(moat_grpc_request *r, const uint8_t *v, size_t n)
{
    static const char bearer[] = "Bearer ";
    size_t bl = sizeof(bearer) - 1;
    r->has_auth = true;
    if (n <= bl || strncasecmp((const char *)v, bearer, bl) != 0 || n - bl > MOAT_GRPC_TOKEN_MAX) {
        r->auth_malformed = true;
        return;
    }
    r->token_len = n - bl;
    memcpy(r->token, v + bl, r->token_len);
}

void moat_grpc_request_header(moat_grpc_request *r, const uint8_t *name, size_t nlen,
                              const uint8_t *value, size_t vlen)
{
    size_t cost = nlen + vlen + HEADER_OVERHEAD;
    if (r->too_big || cost > r->max_header_bytes - r->header_bytes) {
        r->too_big = true;
        return;
    }
    r->header_bytes += cost;
    if (is(name, nlen, ":method")) {
        r->post = is(value, vlen, "POST");
    } else if (is(name, nlen, ":path")) {
        r->method = moat_rpc_method_lookup((const char *)value, vlen);
        r->reflection = is(value, vlen, MOAT_GRPC_REFLECTION_PATH);
        size_t n = vlen < sizeof(r->path) - 1 ? vlen : sizeof(r->path) - 1;
        memcpy(r->path, value, n);
        r->path[n] = '\0';
    } else if (is(name, nlen, "content-type")) {
        r->content_type_seen = true;
        r->content_type_ok = content_type_ok(value, vlen);
    } else if (is(name, nlen, "te")) {
        r->te_trailers = is(value, vlen, "trailers");
    } else if (is(name, nlen, "grpc-timeout")) {
        r->has_timeout = true;
        r->bad_timeout =
            moat_grpc_timeout_parse((const char *)value, vlen, &r->timeout_ms) != MOAT_OK;
    } else if (is(name, nlen, "grpc-encoding")) {
        r->encoding_unsupported = !is(value, vlen, "identity");
    } else if (is(name, nlen, "authorization")) {
        take_authorization(r, value, vlen);
    }
}

static moat_grpc_verdict grpc_error(moat_status *st, moat_code code, const char *reason,
                                    const char *msg, const char *path)
{
    moat_status_set(st, code, reason, "%s", msg);
    if (path != NULL)
        moat_status_add_detail(st, "method", path);
    return MOAT_GRPC_GRPC_ERROR;
}

moat_grpc_verdict moat_grpc_request_finish(const moat_grpc_request *r, bool token_required,
                                           moat_grpc_token_check check, void *ud, int *http_status,
                                           moat_status *st)
{
    moat_status_clear(st);
    *http_status = 200;
    if (!r->post) {
        *http_status = 405;
        moat_status_set(st, MOAT_CODE_UNIMPLEMENTED, "method_not_allowed",
                        "gRPC requests are POSTs");
        return MOAT_GRPC_HTTP_ERROR;
    }
    if (!r->content_type_ok) {
        *http_status = 415;
        moat_status_set(st, MOAT_CODE_UNKNOWN, "unsupported_media_type",
                        "content-type must be application/grpc or application/grpc+proto");
        return MOAT_GRPC_HTTP_ERROR;
    }
    if (r->too_big)
        return grpc_error(st, MOAT_CODE_RESOURCE_EXHAUSTED, "headers_too_large",
                          "the request's header list is over the limit", NULL);
    /* Probes (Kubernetes' among them) send no headers of their own, and health says nothing
     * but SERVING or not. */
    bool health = r->method != NULL && (r->method->id == MOAT_RPC_GRPC_HEALTH_CHECK ||
                                        r->method->id == MOAT_RPC_GRPC_HEALTH_WATCH);
    if (token_required && !health) {
        if (!r->has_auth)
            return grpc_error(st, MOAT_CODE_UNAUTHENTICATED, "missing_token",
                              "authorization: Bearer <token> is required", NULL);
        if (r->auth_malformed || !check(r->token, r->token_len, ud))
            return grpc_error(st, MOAT_CODE_UNAUTHENTICATED, "invalid_token", "invalid token",
                              NULL);
    }
    if (r->method == NULL && !r->reflection) {
        char msg[200];
        snprintf(msg, sizeof(msg), "unknown method \"%s\"", r->path);
        return grpc_error(st, MOAT_CODE_UNIMPLEMENTED, "unknown_method", msg, r->path);
    }
    if (r->encoding_unsupported)
        return grpc_error(st, MOAT_CODE_UNIMPLEMENTED, "unsupported_encoding",
                          "moatd accepts grpc-encoding identity only", r->path);
    if (!r->te_trailers)
        return grpc_error(st, MOAT_CODE_INTERNAL, "te_trailers_required",
                          "te: trailers is required (a proxy on the way may drop trailers)",
                          r->path);
    if (r->bad_timeout)
        return grpc_error(st, MOAT_CODE_INTERNAL, "bad_timeout",
                          "grpc-timeout is 1-8 digits and a unit of H M S m u n", r->path);
    return MOAT_GRPC_ACCEPT;
}

#define ERROR_INFO_TYPE_URL "type.googleapis.com/google.rpc.ErrorInfo"

moat_err moat_grpc_status_details(const moat_status *st, char *out, size_t cap)
{
    if (cap == 0)
        return MOAT_E_TOO_BIG;
    out[0] = '\0';
    if (st->code == MOAT_CODE_OK && st->reason[0] == '\0')
        return MOAT_OK;
    Google__Rpc__ErrorInfo info = GOOGLE__RPC__ERROR_INFO__INIT;
    Google__Rpc__ErrorInfo__MetadataEntry entries[MOAT_STATUS_DETAILS_MAX];
    Google__Rpc__ErrorInfo__MetadataEntry *entry_ptrs[MOAT_STATUS_DETAILS_MAX];
    size_t n =
        st->detail_count < MOAT_STATUS_DETAILS_MAX ? st->detail_count : MOAT_STATUS_DETAILS_MAX;
    for (size_t i = 0; i < n; i++) {
        google__rpc__error_info__metadata_entry__init(&entries[i]);
        entries[i].key = (char *)st->details[i].key;
        entries[i].value = (char *)st->details[i].value;
        entry_ptrs[i] = &entries[i];
    }
    info.reason = (char *)st->reason;
    info.domain = "moat";
    info.n_metadata = n;
    info.metadata = entry_ptrs;
    /* Every string is bounded by moat_status's fields: both messages fit these. */
    uint8_t info_buf[1024];
    uint8_t status_buf[2048];
    size_t info_len = google__rpc__error_info__get_packed_size(&info);
    if (info_len > sizeof(info_buf))
        return MOAT_E_TOO_BIG;
    google__rpc__error_info__pack(&info, info_buf);
    Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
    any.type_url = ERROR_INFO_TYPE_URL;
    any.value.data = info_buf;
    any.value.len = info_len;
    Google__Protobuf__Any *any_ptr = &any;
    Google__Rpc__Status status = GOOGLE__RPC__STATUS__INIT;
    status.code = (int32_t)st->code;
    status.message = (char *)st->message;
    status.n_details = 1;
    status.details = &any_ptr;
    size_t status_len = google__rpc__status__get_packed_size(&status);
    if (status_len > sizeof(status_buf))
        return MOAT_E_TOO_BIG;
    google__rpc__status__pack(&status, status_buf);
    return moat_grpc_base64_encode(status_buf, status_len, out, cap);
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src != NULL ? src : "");
}

moat_err moat_grpc_status_details_parse(const char *value, size_t len, moat_status *st)
{
    uint8_t raw[MOAT_GRPC_DETAILS_MAX];
    size_t raw_len = 0;
    if (moat_grpc_base64_decode(value, len, raw, sizeof(raw), &raw_len) != MOAT_OK)
        return MOAT_E_INVAL;
    Google__Rpc__Status *status = google__rpc__status__unpack(NULL, raw_len, raw);
    if (status == NULL)
        return MOAT_E_INVAL;
    moat_status_clear(st);
    st->code = status->code >= 0 && status->code < MOAT_CODE_COUNT ? (moat_code)status->code
                                                                   : MOAT_CODE_UNKNOWN;
    copy_str(st->message, sizeof(st->message), status->message);
    for (size_t i = 0; i < status->n_details; i++) {
        const Google__Protobuf__Any *any = status->details[i];
        if (any->type_url == NULL || strcmp(any->type_url, ERROR_INFO_TYPE_URL) != 0)
            continue;
        Google__Rpc__ErrorInfo *info =
            google__rpc__error_info__unpack(NULL, any->value.len, any->value.data);
        if (info == NULL)
            continue;
        copy_str(st->reason, sizeof(st->reason), info->reason);
        for (size_t k = 0; k < info->n_metadata; k++)
            moat_status_add_detail(st, info->metadata[k]->key != NULL ? info->metadata[k]->key : "",
                                   info->metadata[k]->value != NULL ? info->metadata[k]->value
                                                                    : "");
        google__rpc__error_info__free_unpacked(info, NULL);
        break;
    }
    google__rpc__status__free_unpacked(status, NULL);
    return MOAT_OK;
}
