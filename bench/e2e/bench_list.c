/* bench_e2e list: ListSessions of many live sessions, measured through moatd over the wire,
 * against Docker's own filtered list of the same containers (GET /containers/json with the
 * label filter moatd's runtime sends), both in the same run. Its moatd has an instance and a
 * container name prefix of its own, so only its containers are listed and all of them are
 * removed at the end, whatever happened. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "bench_e2e.h"

#define DOCKER_SOCKET "/var/run/docker.sock"
/* Creates in flight at once: enough to keep the engine busy, few enough for a 2-core host. */
#define CREATE_WORKERS 4

typedef struct creator {
    int port;
    int nsessions;
    atomic_int next; /* the next session to make */
    atomic_int made;
    atomic_int failed;
} creator;

/* Smallest resources a session may have: the list does not depend on them. */
static void *create_worker(void *arg)
{
    creator *cr = arg;
    raw_conn *c = raw_connect_ready(cr->port, NULL);
    if (c == NULL) {
        atomic_fetch_add(&cr->failed, 1);
        return NULL;
    }
    Moat__V1__Resources small = MOAT__V1__RESOURCES__INIT;
    small.cpu_millis = 100;
    small.memory_bytes = 32u << 20;
    for (int i; (i = atomic_fetch_add(&cr->next, 1)) < cr->nsessions;) {
        char chat[40], sid[64];
        snprintf(chat, sizeof(chat), "%08x-0000-4000-8000-%012x", (unsigned)getpid(), (unsigned)i);
        if (create_session(c, chat, &small, sid, NULL))
            atomic_fetch_add(&cr->made, 1);
        else if (atomic_fetch_add(&cr->failed, 1) == 0)
            fprintf(stderr, "bench list: create %d failed\n", i);
    }
    raw_close(c);
    return NULL;
}

static size_t discard(char *data, size_t size, size_t n, void *ud)
{
    (void)data;
    *(size_t *)ud += size * n;
    return size * n;
}

/* Docker's filtered list, runs times over one kept-alive connection; seconds into t. */
static bool docker_list(const char *instance, int runs, double *t)
{
    char filters[256], url[1024];
    snprintf(filters, sizeof(filters),
             "{\"label\":[\"session_id\",\"chat_id\",\"expires_at\",\"moat.managed=true\","
             "\"moat.instance=%s\"]}",
             instance);
    CURL *h = curl_easy_init();
    char *escaped = h != NULL ? curl_easy_escape(h, filters, 0) : NULL;
    if (escaped == NULL) {
        curl_easy_cleanup(h);
        return false;
    }
    snprintf(url, sizeof(url), "http://localhost/containers/json?filters=%s", escaped);
    curl_free(escaped);
    size_t bytes = 0;
    curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, DOCKER_SOCKET);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &bytes);
    bool ok = true;
    for (int r = -1; r < runs && ok; r++) { /* r == -1 warms the connection up, untimed */
        double t0 = now_s();
        long status = 0;
        ok = curl_easy_perform(h) == CURLE_OK &&
             curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status == 200;
        if (r >= 0)
            t[r] = now_s() - t0;
    }
    curl_easy_cleanup(h);
    return ok;
}

/* ListSessions over one connection, runs times after one untimed call; seconds into t. false
 * when a call fails or does not list exactly `expected` sessions. */
static bool moatd_list(int port, int runs, int expected, double *t)
{
    raw_conn *c = raw_connect_ready(port, NULL);
    bool ok = c != NULL;
    for (int r = -1; r < runs && ok; r++) {
        Moat__V1__ListSessionsRequest req = MOAT__V1__LIST_SESSIONS_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        double t0 = now_s();
        int code = raw_unary(c, "/moat.v1.Sandboxes/ListSessions", &req.base,
                             &moat__v1__list_sessions_response__descriptor, &resp, NULL, 0);
        if (r >= 0)
            t[r] = now_s() - t0;
        size_t listed = resp != NULL ? ((Moat__V1__ListSessionsResponse *)resp)->n_sessions : 0;
        if (code != 0 || listed != (size_t)expected) {
            fprintf(stderr, "bench list: ListSessions code %d, %zu of %d sessions\n", code, listed,
                    expected);
            ok = false;
        }
        if (resp != NULL)
            protobuf_c_message_free_unpacked(resp, NULL);
    }
    if (c != NULL)
        raw_close(c);
    return ok;
}

static void remove_containers(const char *prefix)
{
    double t0 = now_s();
    docker_remove_prefixed(prefix);
    printf("(removed the containers named %s* in %.1f s)\n", prefix, now_s() - t0);
}

void bench_list(int nsessions, int runs)
{
    char instance[64], prefix[64], a_instance[96], a_prefix[96];
    snprintf(instance, sizeof(instance), "bench-list-%d", (int)getpid());
    snprintf(prefix, sizeof(prefix), "moat-bench-list-%d-", (int)getpid());
    snprintf(a_instance, sizeof(a_instance), "--instance=%s", instance);
    snprintf(a_prefix, sizeof(a_prefix), "--container_name_prefix=%s", prefix);
    /* No workspace images: the list does not look at them, and 200 loop devices would. */
    const char *extra[] = {a_instance,
                           a_prefix,
                           "--log_level=warn",
                           "--workspace_quota=false",
                           "--max_sessions=100000",
                           NULL};
    moatd_proc p;
    if (!moatd_start(&p, true, extra)) {
        failures++;
        return;
    }
    creator cr = {.port = p.port, .nsessions = nsessions};
    pthread_t th[CREATE_WORKERS];
    double t0 = now_s();
    for (int i = 0; i < CREATE_WORKERS; i++)
        pthread_create(&th[i], NULL, create_worker, &cr);
    for (int i = 0; i < CREATE_WORKERS; i++)
        pthread_join(th[i], NULL);
    int made = atomic_load(&cr.made);
    printf("(created %d of %d sessions, %d at a time, in %.1f s)\n", made, nsessions,
           CREATE_WORKERS, now_s() - t0);
    double *mt = calloc((size_t)runs, sizeof(double));
    double *dt = calloc((size_t)runs, sizeof(double));
    bool ok = made == nsessions && mt != NULL && dt != NULL && moatd_list(p.port, runs, made, mt) &&
              docker_list(instance, runs, dt);
    if (ok) {
        double m50 = percentile(mt, runs, 0.5) * 1000, m95 = percentile(mt, runs, 0.95) * 1000;
        double d50 = percentile(dt, runs, 0.5) * 1000, d95 = percentile(dt, runs, 0.95) * 1000;
        printf("%-44s value %10.3f ms   baseline %10.3f ms   ratio %7.3f  %s (target < 20 ms)\n",
               "ListSessions of live sessions p50", m50, d50, m50 / d50,
               m50 < 20 ? "PASS" : "FAIL");
        printf("%-44s value %10.3f ms   baseline %10.3f ms   (%d calls each; baseline: Docker's "
               "filtered list)\n",
               "ListSessions of live sessions p95", m95, d95, runs);
        if (m50 >= 20)
            failures++;
    } else {
        printf("%-44s FAIL\n", "ListSessions of live sessions");
        failures++;
    }
    free(mt);
    free(dt);
    moatd_stop(&p);
    remove_containers(prefix);
    moatd_remove_dir(p.state_dir);
}
