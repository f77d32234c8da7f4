/* etcd's v3 API through its JSON gateway (etcd 3.4: POST /v3/kv/put, /v3/kv/range,
 * /v3/kv/deleterange, /v3/kv/txn, /v3/lease/grant, /v3/lease/keepalive, /v3/lease/revoke), for
 * moat's cluster mode (docs/CLUSTER.md). Two layers:
 *
 * - the codec (etcd_codec.c): request bodies and answer parsing, base64 of keys and values. No
 *   I/O, no state, bounded by MOAT_ETCD_* limits checked before anything is allocated.
 * - the client (etcd_client.c): one libcurl easy handle per call over a shared connection cache,
 *   timeouts, and failover across the cluster's members. Blocking and thread-safe; call it from a
 *   worker or a thread of its own, never from moatd's loop.
 *
 * Errors are a moat_code with a moat_status (caller-owned, never NULL): etcd's own errors keep
 * their gRPC code (the numbering is the same) with reason "etcd_error"; no member reachable or
 * none answering in time is UNAVAILABLE "etcd_unavailable", or "etcd_tls_failed" when the last
 * member tried failed the TLS handshake; an answer that is not what the gateway sends is INTERNAL
 * "etcd_bad_answer". */
#ifndef MOAT_CLUSTER_ETCD_H
#define MOAT_CLUSTER_ETCD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* Bounds on what an answer may make moat allocate. etcd's own request limit is 1.5 MiB; moat's
 * keys and values are far smaller (docs/CLUSTER.md, "Keys"). */
#define MOAT_ETCD_KEY_MAX       1024
#define MOAT_ETCD_VALUE_MAX     65536
#define MOAT_ETCD_TXN_OPS_MAX   128 /* etcd's default --max-txn-ops */
#define MOAT_ETCD_ANSWER_MAX    (8u << 20)
#define MOAT_ETCD_ENDPOINTS_MAX 16

/* ---- codec ------------------------------------------------------------------------------ */

/* Standard base64 with padding (what the gateway's Go encoding/json uses for bytes). Encode
 * writes 4 * ceil(len / 3) characters and a NUL into out (cap must hold them); returns the
 * length, or 0 when cap is too small for a non-empty input. */
size_t moat_etcd_b64_encode(const uint8_t *data, size_t len, char *out, size_t cap);
/* Strict decode of text[0..len): the length a multiple of 4, padding only at the end, no
 * other characters. Writes at most cap bytes to out. MOAT_E_INVAL for malformed text,
 * MOAT_E_TOO_BIG when the decoded bytes would not fit cap (checked before writing). */
moat_err moat_etcd_b64_decode(const char *text, size_t len, uint8_t *out, size_t cap,
                              size_t *out_len);

/* The end of the range holding every key that starts with prefix (etcd's range_end for a
 * prefix): the prefix with its last byte below 0xff incremented and what follows dropped; a
 * prefix that is empty or all 0xff gives the single byte 0 ("every key from prefix on"). Writes
 * into out, which holds at least max(prefix.len, 1) bytes; returns its length. */
size_t moat_etcd_prefix_end(moat_slice prefix, uint8_t *out);

typedef enum moat_etcd_target {
    MOAT_ETCD_CREATE_REVISION = 0, /* 0 for a key that does not exist */
    MOAT_ETCD_MOD_REVISION = 1,
    MOAT_ETCD_VERSION = 2,
} moat_etcd_target;

typedef enum moat_etcd_result_op {
    MOAT_ETCD_EQUAL = 0,
    MOAT_ETCD_GREATER = 1,
    MOAT_ETCD_LESS = 2,
    MOAT_ETCD_NOT_EQUAL = 3,
} moat_etcd_result_op;

/* One comparison of a transaction: key's target <result> number. */
typedef struct moat_etcd_cmp {
    moat_slice key;
    moat_etcd_target target;
    moat_etcd_result_op result;
    int64_t number;
} moat_etcd_cmp;

typedef enum moat_etcd_op_kind {
    MOAT_ETCD_OP_PUT = 0,
    MOAT_ETCD_OP_RANGE = 1,
    MOAT_ETCD_OP_DELETE = 2,
} moat_etcd_op_kind;

/* One operation of a transaction. value and lease only for PUT (lease 0: none); prefix for
 * RANGE and DELETE (the key is a prefix). */
typedef struct moat_etcd_op {
    moat_etcd_op_kind kind;
    moat_slice key;
    moat_slice value;
    int64_t lease;
    bool prefix;
} moat_etcd_op;

/* If every comparison holds, the success operations run, else the failure ones; at most
 * MOAT_ETCD_TXN_OPS_MAX of each. The caller owns every array and slice. */
typedef struct moat_etcd_txn_spec {
    const moat_etcd_cmp *cmp;
    size_t cmp_count;
    const moat_etcd_op *success;
    size_t success_count;
    const moat_etcd_op *failure;
    size_t failure_count;
} moat_etcd_txn_spec;

/* Request bodies (JSON text, NUL-terminated). Each returns a string the caller frees with
 * free(), or NULL: MOAT_E_INVAL in *err for a key that is empty or over MOAT_ETCD_KEY_MAX, a
 * value over MOAT_ETCD_VALUE_MAX or too many operations, MOAT_E_NOMEM otherwise. */
char *moat_etcd_req_put(moat_slice key, moat_slice value, int64_t lease, moat_err *err);
/* limit 0: no limit. */
char *moat_etcd_req_range(moat_slice key, bool prefix, int64_t limit, moat_err *err);
/* The keys in [key, end): what paging through a prefix needs (the next page starts past the
 * last key seen). Both non-empty. */
char *moat_etcd_req_range_to(moat_slice key, moat_slice end, int64_t limit, moat_err *err);
char *moat_etcd_req_delete(moat_slice key, bool prefix, moat_err *err);
char *moat_etcd_req_txn(const moat_etcd_txn_spec *txn, moat_err *err);
char *moat_etcd_req_lease_grant(int64_t ttl_seconds, moat_err *err);
/* For keepalive and revoke. */
char *moat_etcd_req_lease_id(int64_t lease, moat_err *err);

/* One key as etcd returned it. key and value are owned by the result that holds this. */
typedef struct moat_etcd_kv {
    uint8_t *key;
    size_t key_len;
    uint8_t *value; /* NULL when the value is empty */
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease;
} moat_etcd_kv;

/* What an answer said. Fields an operation does not produce stay 0. The caller owns it (on the
 * stack is fine) and frees what it holds with moat_etcd_result_free. */
typedef struct moat_etcd_result {
    int64_t revision;  /* the store's revision when etcd answered */
    moat_etcd_kv *kvs; /* range: the keys; txn: those of every range it ran, in order */
    size_t kv_count;
    int64_t count;    /* range: keys in the range (may exceed kv_count under a limit) */
    bool more;        /* range: a limit left keys out */
    bool succeeded;   /* txn: the comparisons held */
    int64_t deleted;  /* deleterange, and the deletes of a txn */
    int64_t lease_id; /* lease grant and keepalive */
    int64_t ttl;      /* lease grant and keepalive: seconds left; keepalive 0: lease gone */
} moat_etcd_result;

void moat_etcd_result_free(moat_etcd_result *res);

typedef enum moat_etcd_call {
    MOAT_ETCD_CALL_PUT = 0,
    MOAT_ETCD_CALL_RANGE = 1,
    MOAT_ETCD_CALL_DELETE = 2,
    MOAT_ETCD_CALL_TXN = 3,
    MOAT_ETCD_CALL_LEASE_GRANT = 4,
    MOAT_ETCD_CALL_LEASE_KEEPALIVE = 5,
    MOAT_ETCD_CALL_LEASE_REVOKE = 6,
    MOAT_ETCD_CALL_WATCH = 7, /* a stream: moat_etcd_parse_watch reads its messages */
} moat_etcd_call;

/* The gateway's path for a call ("/v3/kv/put", …). Static. */
const char *moat_etcd_call_path(moat_etcd_call call);

/* Reads the gateway's answer to `call`: body[0..len) (no NUL needed) with its HTTP status.
 * A 2xx JSON object of the expected shape fills *res (which the caller has zeroed; freed with
 * moat_etcd_result_free, also after an error) and returns OK. An error object ({"error": "…",
 * "code": N} for unary calls, {"error": {"grpc_code": N, "message": "…"}} for the keepalive
 * stream) returns its gRPC code, reason "etcd_error", detail etcd_code; a keepalive whose lease
 * is gone returns NOT_FOUND "etcd_lease_not_found"; anything else is INTERNAL
 * "etcd_bad_answer". A body over MOAT_ETCD_ANSWER_MAX, or a key or value over its limit, is
 * refused before it is decoded. */
moat_code moat_etcd_parse(moat_etcd_call call, long http_status, const char *body, size_t len,
                          moat_etcd_result *res, moat_status *st);

/* ---- watch (POST /v3/watch: one request, then a stream of messages, one JSON object a line) */

/* The watch's one request: every change to the keys in [key, end) from start_revision on. */
char *moat_etcd_req_watch(moat_slice key, moat_slice end, int64_t start_revision, moat_err *err);

/* One message of the stream. The caller owns it (zeroed first) and frees what it holds with
 * moat_etcd_watch_msg_free. */
typedef struct moat_etcd_watch_msg {
    int64_t revision; /* the header's */
    bool created;     /* the first message: the watch is in place */
    bool canceled;    /* etcd ended the watch (see compact_revision) */
    /* Canceled because start_revision was compacted away: the oldest revision there is. */
    int64_t compact_revision;
    /* Each event's key as etcd sent it, in order; a DELETE has version 0 and no value (a key
     * that exists has version 1 or more). */
    moat_etcd_kv *events;
    size_t event_count;
} moat_etcd_watch_msg;

void moat_etcd_watch_msg_free(moat_etcd_watch_msg *m);

/* Reads one line of the stream (no newline needed), bounded as moat_etcd_parse is. An error
 * object: etcd's code, "etcd_error"; anything else unexpected: INTERNAL "etcd_bad_answer". */
moat_code moat_etcd_parse_watch(const char *line, size_t len, moat_etcd_watch_msg *m,
                                moat_status *st);

/* ---- client ------------------------------------------------------------------------------ */

/* TLS to the members, for https:// endpoints: paths of PEM files, each NULL or "" for none. curl
 * reads them at each new connection (connections are kept between calls). The member's
 * certificate and host name are always verified. */
typedef struct moat_etcd_tls {
    const char *ca;   /* CA bundle that verifies the members; none: the system's CAs */
    const char *cert; /* client certificate for etcd's --client-cert-auth; set with key */
    const char *key;  /* its private key, unencrypted */
} moat_etcd_tls;

/* The caller owns every string; moat_etcd_open copies what it keeps. */
typedef struct moat_etcd_config {
    /* The members' client URLs, "http://host:port" or "https://host:port", tried in turn. */
    const char *const *endpoints;
    size_t endpoint_count;
    long connect_timeout_ms; /* per member tried; 0: 1000 */
    long request_timeout_ms; /* whole exchange with one member; 0: 3000 */
    moat_etcd_tls tls;       /* any file set: every endpoint must be https:// */
} moat_etcd_config;

typedef struct moat_etcd moat_etcd;

/* A client for one etcd cluster; no connection is made yet, and the TLS files are not read
 * (moatd checks them when it loads its configuration). NULL with st set (INVALID_ARGUMENT
 * "invalid_config", detail "setting", for no endpoints, too many, one that is not an http(s)
 * URL, a TLS file with an http:// endpoint, or tls.cert without tls.key or the reverse). The
 * caller frees it with moat_etcd_close once no call is running. */
moat_etcd *moat_etcd_open(const moat_etcd_config *cfg, moat_status *st);
void moat_etcd_close(moat_etcd *etcd);

/* Failover. A member that cannot be connected to, or whose TLS handshake fails (UNAVAILABLE
 * "etcd_tls_failed": its certificate did not verify, or it refused the handshake), is skipped for
 * the next one, for every call: the request never reached it. A member that timed out or
 * answered UNAVAILABLE (it has no leader, or lost quorum) is skipped for reads, lease keepalives
 * and grants (a spare lease expires by itself) but not for writes, whose effect is then unknown:
 * those return UNAVAILABLE "etcd_unavailable" and the caller decides (etcd's own client does the
 * same). A member that refuses our client certificate under TLS 1.3 does so with an alert once it
 * has read our side of the handshake: met within the handshake it is "etcd_tls_failed", met in
 * place of the answer "etcd_unavailable" (which of the two is a race). The member that last
 * answered is tried first by the next call.
 *
 * Each call fills *res (zeroed here; the caller frees it with moat_etcd_result_free, also after
 * an error) and returns its code. */
moat_code moat_etcd_put(moat_etcd *etcd, moat_slice key, moat_slice value, int64_t lease,
                        moat_etcd_result *res, moat_status *st);
moat_code moat_etcd_range(moat_etcd *etcd, moat_slice key, bool prefix, int64_t limit,
                          moat_etcd_result *res, moat_status *st);
/* The keys in [key, end), at most limit of them (0: all); res->more says some were left out. */
moat_code moat_etcd_range_to(moat_etcd *etcd, moat_slice key, moat_slice end, int64_t limit,
                             moat_etcd_result *res, moat_status *st);
moat_code moat_etcd_delete(moat_etcd *etcd, moat_slice key, bool prefix, moat_etcd_result *res,
                           moat_status *st);
moat_code moat_etcd_txn(moat_etcd *etcd, const moat_etcd_txn_spec *txn, moat_etcd_result *res,
                        moat_status *st);
moat_code moat_etcd_lease_grant(moat_etcd *etcd, int64_t ttl_seconds, moat_etcd_result *res,
                                moat_status *st);
/* One keepalive round; res->ttl is the TTL restored. A lease that is gone: NOT_FOUND
 * "etcd_lease_not_found". */
moat_code moat_etcd_lease_keepalive(moat_etcd *etcd, int64_t lease, moat_etcd_result *res,
                                    moat_status *st);
moat_code moat_etcd_lease_revoke(moat_etcd *etcd, int64_t lease, moat_etcd_result *res,
                                 moat_status *st);

/* Called with each message of a watch stream (valid during the call); false ends the watch. */
typedef bool (*moat_etcd_watch_fn)(void *ud, const moat_etcd_watch_msg *m);

/* Watches [key, end) from start_revision on, through the first member that takes the
 * connection (in the order calls use), calling fn with each message, until the stream ends, fn
 * returns false, or *stop is true (looked at about once a second). Blocking: it returns when
 * the stream is over, with UNAVAILABLE "etcd_unavailable" when the member went away or no
 * member could be reached, OK when fn or *stop ended it, or the status of a message that could
 * not be read. No request timeout: a watch lasts, but not on a member that has lost its leader
 * (cut off from its peers, it would stay open and silent): etcd is asked to end it then. */
moat_code moat_etcd_watch(moat_etcd *etcd, moat_slice key, moat_slice end, int64_t start_revision,
                          moat_etcd_watch_fn fn, void *ud, const atomic_bool *stop,
                          moat_status *st);

#endif
