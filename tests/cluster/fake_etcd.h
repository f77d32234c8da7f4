/* A fake etcd gateway for unit tests: a real HTTP server (libmicrohttpd, a thread per
 * connection) on a loopback port, answering every POST with what the test set, and recording
 * what it was sent. */
#ifndef MOAT_TEST_FAKE_ETCD_H
#define MOAT_TEST_FAKE_ETCD_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum fake_etcd_mode {
    FAKE_ETCD_ANSWER, /* status and body as set */
    FAKE_ETCD_HANG,   /* no answer until fake_etcd_stop */
    FAKE_ETCD_CLOSE,  /* the connection closed without an answer */
    FAKE_ETCD_HUGE,   /* a 200 whose body is `huge_bytes` of spaces */
} fake_etcd_mode;

typedef struct fake_etcd {
    void *daemon; /* struct MHD_Daemon */
    int port;
    char url[64]; /* http://127.0.0.1:<port> */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping;
    fake_etcd_mode mode;
    int status;
    char body[4096];
    size_t huge_bytes;
    int requests;         /* complete requests seen */
    char last_path[64];   /* of the last one */
    char last_body[4096]; /* of the last one, NUL-terminated (cut at 4095 bytes) */
} fake_etcd;

/* 0, or -1 when it cannot listen. Answers 200 with "{}" until told otherwise. */
int fake_etcd_start(fake_etcd *f);
/* Sets what the next requests get. */
void fake_etcd_set(fake_etcd *f, fake_etcd_mode mode, int status, const char *body);
int fake_etcd_requests(fake_etcd *f);
/* Releases hanging requests and stops the server. */
void fake_etcd_stop(fake_etcd *f);

#endif
