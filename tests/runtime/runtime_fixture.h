/* What the runtime's unit tests (test_runtime_unit_*.c) share: each test gets a runtime on a fake
 * Docker engine (fake_docker.c, a real HTTP server on a Unix socket) in a directory of its own,
 * scripts the engine's answers and reads back what the runtime sent it and what it stored. */
#ifndef MOAT_TESTS_RUNTIME_FIXTURE_H
#define MOAT_TESTS_RUNTIME_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/json.h"
#include "fake_docker.h"
#include "runtime/runtime.h"

#define CHAT_ID               "123e4567-e89b-12d3-a456-426614174000"
#define NON_CANONICAL_CHAT_ID "123E4567E89B12D3A456426614174000"
#define SESSION_ID            "00000000-0000-0000-0000-000000000010"
#define SESSION_ID2           "00000000-0000-0000-0000-000000000011"
#define SESSION_ID3           "00000000-0000-0000-0000-000000000012"
#define PREFIX                "moat-unit-"

#define MANAGED ",\"moat.managed\":\"true\""

/* A test's paths (under dir), its fake engine and the runtime on it; the test owns all of it
 * and teardown frees it. */
typedef struct fx {
    char dir[64];
    char deps[128], lambda[128], bundle[128], chats[128], state[128], store[160], sock[128];
    fake_docker fd;
    moat_runtime_config cfg;
    moat_runtime *rt;
} fx;

/* An ISO 8601 time in milliseconds since the epoch; fails the test when it does not parse. */
int64_t iso(const char *text);
/* Opens f->rt (f owns it) on f->cfg; fails the test with the reason when it cannot. */
void open_runtime(fx *f);
/* cmocka per-test fixtures: a fresh directory under /tmp holding the runtime's paths, a fake
 * engine on a socket in it and a runtime on that engine (*state, an fx), without workspace
 * quotas; teardown closes and stops them and removes the directory. */
int setup(void **state);
int teardown(void **state);
/* A recorded request's body as JSON (the caller cJSON_Delete()s it); fails on NULL or not JSON. */
cJSON *body_of(const fake_request *rq);
/* Creates SESSION_ID for chat, created 2026-04-02T12:00 and expiring five minutes later. */
moat_code create_default(fx *f, const char *chat, moat_session *s, moat_status *st);
/* A running container as Docker describes it, in the list's shape (Names, Labels) or
 * inspect's (Name, Config.Labels): the three session labels, expiring at exp, then
 * extra_labels, JSON members such as MANAGED. name is Docker's, without the leading '/'.
 * Returns a malloc'd string, which route_inspect and route_list free. */
char *described(bool inspect, const char *id, const char *sid, const char *name, const char *exp,
                const char *extra_labels);
/* Scripts the answer to GET /containers/<id>/json: described_text, which it frees. */
void route_inspect(fx *f, const char *id, char *described_text);
/* A container in the list's shape with the labels given (NULL: absent), named as this runtime
 * names sid; created_iso NULL: Created as a number. Returns a malloc'd string for route_list. */
char *container_json(const char *id, const char *sid, const char *cid, const char *exp,
                     const char *created_iso, bool managed, const char *state);
/* Scripts the answer to GET url_part: an array of the n items, which it free()s. */
void route_list(fx *f, const char *url_part, char **items, size_t n);
/* The filters= query parameter of url, URL-decoded (malloc'd: the caller frees it). */
char *decoded_filters(const char *url);
/* The session's row in the store, read on a connection of its own: its expires_at_ms (-1 when
 * there is none), with renewed and state when not NULL. */
int64_t store_expiry(const char *store, const char *session_id, int *renewed, int *state);

#endif
