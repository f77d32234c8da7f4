/* moat wire: the frame codec (no I/O), stream-id bookkeeping and per-stream
 * flow-control windows, shared by moatd and libmoat.
 *
 * A frame on the byte stream is a 4-byte big-endian length L, then L bytes of
 * one encoded moat.v1.Frame (proto/moat/v1/frame.proto). docs/PROTOCOL.md has
 * the whole protocol. */
#ifndef MOAT_WIRE_H
#define MOAT_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOAT_WIRE_PROTOCOL_VERSION 1u
#define MOAT_WIRE_HEADER_SIZE      4u
/* Largest frame before the Hello is accepted. */
#define MOAT_WIRE_PREHELLO_MAX_FRAME 4096u
/* Default and hard ceiling of max_frame_size. */
#define MOAT_WIRE_DEFAULT_MAX_FRAME (1u << 20)
#define MOAT_WIRE_MAX_FRAME_LIMIT   (16u << 20)
/* Default initial per-stream window, in Message payload bytes. */
#define MOAT_WIRE_DEFAULT_WINDOW (1u << 20)
#define MOAT_WIRE_MAX_WINDOW     0x7fffffffu
/* Most metadata entries in a Call and details in an End that a frame may carry. */
#define MOAT_WIRE_MAX_KV 16u

/* Frame kinds, numbered as the `kind` oneof's field numbers in frame.proto. */
typedef enum moat_frame_kind {
    MOAT_FRAME_NONE = 0,
    MOAT_FRAME_HELLO = 2,
    MOAT_FRAME_HELLO_ACK = 3,
    MOAT_FRAME_CALL = 4,
    MOAT_FRAME_MESSAGE = 5,
    MOAT_FRAME_END = 6,
    MOAT_FRAME_CANCEL = 7,
    MOAT_FRAME_WINDOW_UPDATE = 8,
    MOAT_FRAME_PING = 9,
    MOAT_FRAME_PONG = 10,
    MOAT_FRAME_GO_AWAY = 11,
} moat_frame_kind;

/* "hello", "call", …; "unknown" otherwise. Static. */
const char *moat_frame_kind_name(moat_frame_kind kind);

/* A decoded or to-be-encoded frame. When decoded, every slice points into the
 * frame body given to moat_wire_frame_decode and is valid as long as it is.
 * When encoding, slices are read and copied into the output. */
typedef struct moat_frame {
    uint32_t stream_id;
    moat_frame_kind kind;
    union {
        struct {
            uint32_t protocol_version;
            moat_slice client_name;
            moat_slice token;
        } hello;
        struct {
            uint32_t protocol_version;
            moat_slice server_version;
            uint32_t max_frame_size;
            uint32_t initial_window;
            uint32_t max_concurrent_streams;
            uint32_t idle_timeout_seconds;
        } hello_ack;
        struct {
            moat_slice method;
            uint64_t deadline_ms;
            size_t metadata_count;
            moat_kv metadata[MOAT_WIRE_MAX_KV];
        } call;
        struct {
            moat_slice payload;
        } message;
        struct {
            moat_code code;
            moat_slice message;
            moat_slice reason;
            size_t detail_count;
            moat_kv details[MOAT_WIRE_MAX_KV];
        } end;
        struct {
            moat_slice reason;
        } cancel;
        struct {
            uint32_t increment;
        } window_update;
        struct {
            uint64_t payload;
        } ping, pong;
        struct {
            uint32_t last_stream_id;
            moat_code code;
            moat_slice message;
        } go_away;
    } u;
} moat_frame;

/* Bytes moat_wire_encode will write for f, length prefix included; 0 if f is
 * not encodable (unknown kind, too many key/values). */
size_t moat_wire_encoded_size(const moat_frame *f);
/* Encodes f with its length prefix into out[0..cap). *written is set on
 * success. MOAT_E_TOO_BIG if cap is short; MOAT_E_INVAL for a bad frame. */
moat_err moat_wire_encode(const moat_frame *f, uint8_t *out, size_t cap, size_t *written);

/* Most bytes moat_wire_encode_message_prefix writes. */
#define MOAT_WIRE_MESSAGE_PREFIX_MAX 32u
/* Writes the first bytes moat_wire_encode writes for a Message frame on
 * stream_id whose payload is payload_len bytes long: everything before the
 * payload itself. The payload placed right after them completes the frame, so
 * a sender can encode a response in place instead of copying it in.
 * MOAT_E_TOO_BIG when cap is short or the frame would pass 2^32-1 bytes. */
moat_err moat_wire_encode_message_prefix(uint32_t stream_id, size_t payload_len, uint8_t *out,
                                         size_t cap, size_t *written);

/* Parses one frame body (the bytes after the length prefix). Slices in *out
 * point into body. MOAT_E_UNKNOWN_KIND for a kind this build does not know or
 * no kind at all; MOAT_E_PROTO for malformed protobuf; MOAT_E_TOO_BIG for more
 * than MOAT_WIRE_MAX_KV key/values. */
moat_err moat_wire_frame_decode(moat_slice body, moat_frame *out);

/* Incremental splitter of the byte stream into frame bodies. Accepts input cut
 * anywhere, one byte at a time included. The length is checked against the
 * limit before anything is allocated; the partial-frame buffer never exceeds
 * max_frame. */
typedef struct moat_wire_decoder {
    uint32_t max_frame;
    uint8_t header[MOAT_WIRE_HEADER_SIZE];
    size_t header_seen;
    uint32_t body_len;
    moat_buf body;
    moat_err error;
    const char *error_reason;
} moat_wire_decoder;

void moat_wire_decoder_init(moat_wire_decoder *d, uint32_t max_frame);
/* Raises or lowers the limit for frames not yet started (after the Hello). */
void moat_wire_decoder_set_max(moat_wire_decoder *d, uint32_t max_frame);
void moat_wire_decoder_free(moat_wire_decoder *d);

/* Feeds in[0..len). Consumes bytes up to the end of at most one frame and sets
 * *consumed. Returns:
 *   MOAT_OK            *body is a whole frame body, pointing into `in` or into
 *                      the decoder's buffer; valid until the next feed or free;
 *   MOAT_E_AGAIN       all input consumed, the frame is not complete yet;
 *   MOAT_E_ZERO_LENGTH / MOAT_E_TOO_BIG / MOAT_E_NOMEM
 *                      the stream is unusable: the decoder stays in that error
 *                      (every later feed returns it) and must be discarded.
 * The reason text for the last error is moat_wire_decoder_reason(). */
moat_err moat_wire_decoder_feed(moat_wire_decoder *d, const uint8_t *in, size_t len,
                                size_t *consumed, moat_slice *body);
/* Static text describing the decoder's error, "" when none. */
const char *moat_wire_decoder_reason(const moat_wire_decoder *d);

/* Flow-control window for one direction of one stream. `available` is the
 * credit left; it never goes negative and never exceeds MOAT_WIRE_MAX_WINDOW. */
typedef struct moat_window {
    uint32_t available;
    /* Receive side only: bytes delivered to the application since the last
     * grant, to decide when to send a WindowUpdate. */
    uint32_t pending_grant;
    uint32_t initial;
} moat_window;

void moat_window_init(moat_window *w, uint32_t initial);
/* Sender: takes n bytes of credit. MOAT_E_WINDOW if fewer are available. */
moat_err moat_window_consume(moat_window *w, uint32_t n);
/* Sender: a WindowUpdate arrived. MOAT_E_WINDOW for 0 or an overflow past
 * MOAT_WIRE_MAX_WINDOW (a protocol error of the peer). */
moat_err moat_window_grant(moat_window *w, uint32_t increment);
/* Receiver: the application has consumed n bytes. Returns the increment to
 * send in a WindowUpdate now (0 if not yet worth one: below half the initial
 * window) and credits it back to `available`. */
uint32_t moat_window_release(moat_window *w, uint32_t n);

/* Open streams of one connection, by id. Clients use odd ids in increasing
 * order; a reused or decreasing id is refused. A plain hash table, no I/O. */
typedef struct moat_stream_table moat_stream_table;

/* NULL on allocation failure. max_streams bounds open streams. */
moat_stream_table *moat_stream_table_new(uint32_t max_streams);
void moat_stream_table_free(moat_stream_table *t);
/* Registers id with the caller's pointer (not owned). MOAT_E_STREAM for id 0,
 * an even id, or an id not above the highest seen; MOAT_E_TOO_BIG when
 * max_streams are open. */
moat_err moat_stream_table_open(moat_stream_table *t, uint32_t id, void *user);
/* The pointer registered for id, or NULL if it is not open. */
void *moat_stream_table_get(const moat_stream_table *t, uint32_t id);
/* Forgets id; MOAT_E_NOT_FOUND if it is not open. Its number stays used. */
moat_err moat_stream_table_close(moat_stream_table *t, uint32_t id);
uint32_t moat_stream_table_count(const moat_stream_table *t);
uint32_t moat_stream_table_last_id(const moat_stream_table *t);
/* Calls fn for each open stream (fn must not open or close streams). */
void moat_stream_table_each(const moat_stream_table *t,
                            void (*fn)(uint32_t id, void *user, void *arg), void *arg);

#ifdef __cplusplus
}
#endif
#endif
