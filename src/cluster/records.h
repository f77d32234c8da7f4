/* The cluster directory's records (docs/CLUSTER.md, "Keys"): the session record
 * /moat/v1/sessions/<session-id>, the chat key /moat/v1/chats/<chat-id> and the placement hint
 * /moat/v1/homes/<chat-id>, their JSON values both ways, and who owns a session now. No I/O,
 * bounded: a value is refused from its size before it is parsed. Every struct is by value. */
#ifndef MOAT_CLUSTER_RECORDS_H
#define MOAT_CLUSTER_RECORDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster/membership.h"
#include "moat/common.h"

#define MOAT_SESSIONS_PREFIX       "/moat/v1/sessions/"
#define MOAT_CHATS_PREFIX          "/moat/v1/chats/"
#define MOAT_HOMES_PREFIX          "/moat/v1/homes/"
#define MOAT_RECORD_KEY_MAX        64   /* the longest prefix and a UUID, with a NUL */
#define MOAT_RECORD_VALUE_MAX      2048 /* a session record is about 400 bytes */
#define MOAT_RECORD_IMAGE_MAX      256  /* an image reference, with a NUL */
#define MOAT_RECORD_END_REASON_MAX 64   /* a snake_case reason, with a NUL */

typedef enum moat_record_state {
    MOAT_RECORD_CREATING = 1, /* the chat key is taken; the container is being started */
    MOAT_RECORD_RUNNING = 2,
    MOAT_RECORD_ENDED = 3, /* ended_at_ms and end_reason say when and why */
} moat_record_state;

/* "creating", "running", "ended"; NULL for anything else. */
const char *moat_record_state_name(moat_record_state s);

typedef struct moat_session_record {
    char session_id[MOAT_UUID_STR_LEN]; /* from the key, canonical */
    char chat_id[MOAT_UUID_STR_LEN];    /* canonical */
    char node_id[MOAT_NODE_ID_MAX];     /* the owner */
    int64_t node_lease; /* the owner's incarnation: its lease when it wrote the record */
    char address[MOAT_NODE_ADDRESS_MAX]; /* the owner's advertised host:port */
    moat_record_state state;
    char image[MOAT_RECORD_IMAGE_MAX];
    int64_t created_at_ms;
    int64_t expires_at_ms;
    int64_t ended_at_ms;                         /* 0 unless ended */
    char end_reason[MOAT_RECORD_END_REASON_MAX]; /* "" unless ended */
} moat_session_record;

/* The chat key's value: the chat's one live session and its node. The key lives under the
 * owner's lease, so it goes when the owner does. */
typedef struct moat_chat_record {
    char chat_id[MOAT_UUID_STR_LEN]; /* from the key */
    char session_id[MOAT_UUID_STR_LEN];
    char node_id[MOAT_NODE_ID_MAX];
} moat_chat_record;

/* A key for a canonical UUID into out (cap >= MOAT_RECORD_KEY_MAX); returns its length, or 0
 * when id is not a canonical UUID (lowercase with hyphens) or cap is too small. */
size_t moat_session_record_key(const char *session_id, char *out, size_t cap);
size_t moat_chat_record_key(const char *chat_id, char *out, size_t cap);
size_t moat_home_record_key(const char *chat_id, char *out, size_t cap);

/* The JSON value, NUL-terminated in out[0..cap); its length, or 0 when the record is invalid
 * (an id, the address, the state, a negative time, an ended record without its end, a live
 * one with one, a string past its field) or cap is too small. The session id is the key's, not
 * the value's. */
size_t moat_session_record_encode(const moat_session_record *r, char *out, size_t cap);
size_t moat_chat_record_encode(const moat_chat_record *r, char *out, size_t cap);
/* {"node_id": …}: the node that held the chat last (its workspace is there). */
size_t moat_home_record_encode(const char *node_id, char *out, size_t cap);

/* A record from its key and value as etcd returned them. MOAT_E_INVAL for a key of another
 * prefix or id, or a value that is not a valid record (over MOAT_RECORD_VALUE_MAX, not JSON,
 * a field missing, of the wrong type or out of range); *out is zeroed then. */
moat_err moat_session_record_decode(const uint8_t *key, size_t key_len, const uint8_t *value,
                                    size_t value_len, moat_session_record *out);
moat_err moat_chat_record_decode(const uint8_t *key, size_t key_len, const uint8_t *value,
                                 size_t value_len, moat_chat_record *out);
/* node_id gets MOAT_NODE_ID_MAX bytes. */
moat_err moat_home_record_decode(const uint8_t *value, size_t value_len,
                                 char node_id[MOAT_NODE_ID_MAX]);

/* The live node that owns r: the member of nodes[0..count) with r's node id AND r's lease. A
 * record whose node is absent, or present under another lease (restarted as a new
 * incarnation), belongs to a node that is gone: NULL, and the session is GONE "node_lost". */
const moat_node *moat_session_record_owner(const moat_session_record *r, const moat_node *nodes,
                                           size_t count);

#endif
