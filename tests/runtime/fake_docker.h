/* A fake Docker engine for unit tests: a real HTTP server (libmicrohttpd) on a Unix socket, on
 * loopback TCP, or over HTTPS with client-certificate verification on loopback, that
 * records every request and answers from scripted routes, falling back to engine-like
 * defaults: a create makes "container-123"; an inspect of any container id answers running, with
 * the name and labels of the last create (so the runtime sees its own container), or with no
 * labels before any create. On container start it can launch a fake execd (answering GET /ping)
 * on the socket dir the container spec bind-mounts at /run/moat, as the real sandbox would. */
#ifndef MOAT_TEST_FAKE_DOCKER_H
#define MOAT_TEST_FAKE_DOCKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#define FAKE_MAX_REQUESTS 256
#define FAKE_MAX_ROUTES   16

typedef struct fake_request {
    char method[8];
    char url[2048];     /* path and query, as sent (percent-encoded) */
    char *body;         /* NUL-terminated, may be "" */
    char tls_peer[128]; /* over TLS: the client certificate's subject DN, else "" */
} fake_request;

typedef struct fake_route {
    char method[8];
    char url_contains[256];
    int status;
    char *body;     /* answer body, owned */
    bool held;      /* answer only when fake_docker_stop releases it (client timeouts) */
    bool cut_short; /* send part of the body and drop the connection */
    int remaining;  /* answers left; -1 forever */
} fake_route;

typedef struct fake_docker {
    struct MHD_Daemon *daemon;
    char socket_path[108];
    char api_version[16];
    pthread_mutex_t mu;
    pthread_cond_t released; /* with released_all or a new release_gen: held answers go out */
    bool released_all;
    unsigned release_gen; /* moved on by fake_docker_release */
    fake_request requests[FAKE_MAX_REQUESTS];
    size_t request_count;
    fake_route routes[FAKE_MAX_ROUTES];
    size_t route_count;
    bool start_execd; /* default true */
    struct MHD_Daemon *execds[8];
    size_t execd_count;
    char last_create_body[16384];
    char last_create_name[128]; /* the name= of the last create, "" when it had none */
    bool tls;
    char *tls_pem[3]; /* server cert, server key, client CA: kept while the daemon runs */
} fake_docker;

/* Starts the server on socket_path (removed first). Returns 0 on success. */
int fake_docker_start(fake_docker *fd, const char *socket_path);
/* The same engine on 127.0.0.1 at an ephemeral port (for tcp:// endpoints). */
int fake_docker_start_tcp(fake_docker *fd, int *port);
/* The same engine over HTTPS on 127.0.0.1, like dockerd --tlsverify: it presents cert_pem with
 * key_pem, and the TLS handshake fails unless the client presents a certificate that chains to
 * client_ca_pem (no certificate, or one from another CA, never reaches the HTTP layer). The PEM
 * texts are copied. Returns -1 when the server cannot start, -2 when libmicrohttpd was built
 * without TLS. */
int fake_docker_start_tls(fake_docker *fd, int *port, const char *cert_pem, const char *key_pem,
                          const char *client_ca_pem);
void fake_docker_stop(fake_docker *fd);
/* Adds a scripted answer for requests whose method matches and whose URL contains
 * url_contains (the newest matching route wins); times: how many requests it answers
 * (-1 forever). */
void fake_docker_route(fake_docker *fd, const char *method, const char *url_contains, int status,
                       const char *body, int times);
/* Requests that match are answered only when fake_docker_stop runs: the client must give up
 * first, whatever the machine's speed. */
void fake_docker_route_hold(fake_docker *fd, const char *method, const char *url_contains);
/* A scripted answer (as fake_docker_route, forever) that is held like fake_docker_route_hold's. */
void fake_docker_route_held(fake_docker *fd, const char *method, const char *url_contains,
                            int status, const char *body);
/* Answers the requests held so far; later ones that match a held route wait again. */
void fake_docker_release(fake_docker *fd);
void fake_docker_route_cut(fake_docker *fd, const char *method, const char *url_contains);
/* Number of recorded requests matching method and URL substring. */
size_t fake_docker_count(fake_docker *fd, const char *method, const char *url_contains);
/* The first matching request (or NULL). Valid until fake_docker_stop. */
const fake_request *fake_docker_find(fake_docker *fd, const char *method, const char *url_contains);

#endif
