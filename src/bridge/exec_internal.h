/* What exec.c (an execution's life: the run request, curl's callbacks, attach, detach, cancel,
 * retention) and exec_ring.c (the replay ring, delivery under credit, pausing, the memory
 * budget) share: the execution itself. Inside the bridge only; bridge.h is its API. */
#ifndef MOAT_BRIDGE_EXEC_INTERNAL_H
#define MOAT_BRIDGE_EXEC_INTERNAL_H

#include "internal.h"

#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
    bridge_req *r; /* the bridge's (freed after its done callback); NULL once the stream ended */
    char *scope;   /* owned */
    char *id;      /* owned: execd's, from the init event; NULL before */
    bool attachable;
    moat_bridge_decoder *dec;            /* freed when the transfer ends */
    moat_bridge_decoder_stats dec_stats; /* the decoder's, kept when it was freed */
    bool binary_requested;
    bool background;
    bool timeout_set;

    rec *head, *tail; /* the ring, oldest first; records owned */
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

    struct moat_bridge_exec *next, *prev; /* the bridge's executions */
};

/* ---- exec_ring.c ---- */
/* Undelivered bytes past which a transfer with a consumer pauses. */
size_t moat__exec_pause_mark(const moat_bridge_exec *ex);
/* Set what the budget and the account count: undelivered bytes, bytes curl keeps while the
 * transfer is paused, and the transfer's buffers (from the size of a write). */
void moat__exec_set_pending(moat_bridge_exec *ex, size_t bytes);
void moat__exec_set_held(moat_bridge_exec *ex, size_t bytes);
void moat__exec_set_transfer_bytes(moat_bridge_exec *ex, size_t bytes);
void moat__exec_note_transfer_buffers(moat_bridge_exec *ex, size_t write_len);
/* Moves what the execution pins to account (NULL: none; the caller's, not owned). */
void moat__exec_change_account(moat_bridge_exec *ex, moat_bridge_account *account);
void moat__exec_ring_drop_head(moat_bridge_exec *ex);
/* Drops replay nobody waits for: over the budget's cap (all executions), over replay_bytes. */
void moat__exec_budget_evict(moat_bridge *b);
void moat__exec_evict(moat_bridge_exec *ex);
bool moat__exec_budget_blocks(const moat_bridge_exec *ex);
/* The decoder's emit function (ud: the execution): the event goes into the ring, copied. */
bool moat__exec_ring_emit(void *ud, const moat_bridge_event *ev);
/* Hands the consumer what its credit allows, and its end once the run finished. */
void moat__exec_deliver(moat_bridge_exec *ex);
/* The write callback's answer when the transfer must wait (CURL_WRITEFUNC_PAUSE). */
size_t moat__exec_pause_write(moat_bridge_exec *ex, size_t n, bool by_budget);
void moat__exec_maybe_unpause(moat_bridge_exec *ex);
void moat__exec_budget_released(moat_bridge *b);
/* True, with *st set, when the budget is full and a new stream is refused. */
bool moat__exec_refuse_for_budget(moat_bridge *b, moat_status *st);

#endif
