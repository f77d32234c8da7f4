/* moatd's server handle: init, listeners, the loop's prepare and check phases, signals and reload,
 * the graceful drain and close. Connections are conn.c, streams stream.c, writing conn_write.c;
 * business logic lives in handlers.c. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluster_peer.h"
#include "server_internal.h"

/* Connections accepted in one loop iteration at most: libuv accepts the whole backlog in one go
 * otherwise, and a flood of connections would make every authenticated client's frames wait
 * behind it. Leaving one unaccepted pauses the listener until the check phase takes it. */
#define ACCEPT_BATCH 8

static void on_connection(uv_stream_t *server, int status)
{
    srv *s = server->data;
    if (status < 0) {
        moat_log(MOAT_LOG_WARN, "accept_failed", "error=\"%s\"", uv_strerror(status));
        return;
    }
    bool grpc = server == (uv_stream_t *)&s->grpc_tcp;
    if (++s->accepted_this_turn > ACCEPT_BATCH) {
        if (grpc)
            s->grpc_deferred = true;
        else if (server == (uv_stream_t *)&s->tcp)
            s->tcp_deferred = true;
        else
            s->pipe_deferred = true;
        return;
    }
    if (grpc)
        moat__grpc_accept(server);
    else
        moat__conn_accept(server);
}

/* ------------------------------------------------------------ drain, signals */

void moat__srv_job(srv *s, int delta)
{
    s->inflight = (uint32_t)((int)s->inflight + delta);
}

static void close_listeners(srv *s)
{
    if (s->tcp_on && !uv_is_closing((uv_handle_t *)&s->tcp))
        uv_close((uv_handle_t *)&s->tcp, NULL);
    if (s->pipe_on && !uv_is_closing((uv_handle_t *)&s->pipe)) {
        uv_close((uv_handle_t *)&s->pipe, NULL);
        unlink(s->cfg.unix_socket);
    }
    if (s->grpc_on && !uv_is_closing((uv_handle_t *)&s->grpc_tcp))
        uv_close((uv_handle_t *)&s->grpc_tcp, NULL);
}

static void on_handles_closed(uv_handle_t *h)
{
    (void)h;
}

static void finish_shutdown(srv *s)
{
    if (s->finished)
        return;
    s->finished = true;
    uv_timer_stop(&s->grace);
    uv_close((uv_handle_t *)&s->grace, NULL);
    if (s->signals_on) {
        uv_close((uv_handle_t *)&s->sig_term, NULL);
        uv_close((uv_handle_t *)&s->sig_int, NULL);
        uv_close((uv_handle_t *)&s->sig_hup, NULL);
    }
    uv_close((uv_handle_t *)&s->close_async, NULL);
    uv_close((uv_handle_t *)&s->check, on_handles_closed);
    uv_close((uv_handle_t *)&s->prepare, NULL);
    moat__peers_close(s);
    /* The runtime first: its reaper writes ends to the directory through the cluster's client. */
    moat__handlers_close(s);
    moat__cluster_stop(s);
    moat__metrics_stop(s->metrics);
    if (s->close_cb != NULL)
        s->close_cb(s, s->close_ud);
}

static void on_grace(uv_timer_t *t)
{
    srv *s = t->data;
    moat_log(MOAT_LOG_INFO, "drain_grace_over", "connections=%u", s->nconns);
    while (s->conns != NULL)
        moat__conn_fail(s->conns, MOAT_CODE_UNAVAILABLE, "server shut down");
    moat__grpc_close_all(s);
}

static void start_drain(srv *s, const char *why)
{
    if (s->draining)
        return;
    s->draining = true;
    moat_log(MOAT_LOG_INFO, "drain_start",
             "signal=%s grace_seconds=%u connections=%u grpc_connections=%u", why,
             s->cfg.drain_grace_seconds, s->nconns, s->ngrpc + s->grpc_pending);
    close_listeners(s);
    moat__grpc_health_changed(s);
    conn *c = s->conns;
    while (c != NULL) {
        conn *next = c->next;
        if (c->state == CONN_READY && c->streams == NULL)
            moat__conn_fail(c, MOAT_CODE_UNAVAILABLE, "server is shutting down");
        else if (c->state == CONN_READY) {
            moat__conn_send_go_away(c, MOAT_CODE_UNAVAILABLE, "server is shutting down");
            c->draining_notified = true;
        } else
            moat__conn_close(c, MOAT_CODE_UNAVAILABLE, "server is shutting down");
        c = next;
    }
    moat__grpc_drain(s);
    uv_timer_start(&s->grace, on_grace, (uint64_t)s->cfg.drain_grace_seconds * 1000u, 0);
}

static void on_drain_check(srv *s)
{
    /* Thread-pool jobs still use the runtime: wait for them before closing it. */
    if (s->draining && s->conns == NULL && s->grpc_conns == NULL && s->inflight == 0)
        finish_shutdown(s);
}

/* Only what can change under a running server: listeners, Docker and paths stay as they were
 * at start-up. Takes next's token. */
static void apply_reload(srv *s, moat_server_config *next)
{
    s->cfg.log_level = next->log_level;
    moat_log_set_level(next->log_level);
    free(s->cfg.token);
    s->cfg.token = next->token;
    next->token = NULL;
    s->cfg.max_connections = next->max_connections;
    s->cfg.max_pending_hellos = next->max_pending_hellos;
    s->cfg.max_streams_per_connection = next->max_streams_per_connection;
    s->cfg.max_frame_size = next->max_frame_size;
    s->cfg.initial_window = next->initial_window;
    s->cfg.idle_timeout_seconds = next->idle_timeout_seconds;
    s->cfg.hello_timeout_seconds = next->hello_timeout_seconds;
    s->cfg.drain_grace_seconds = next->drain_grace_seconds;
    s->cfg.max_pending_bytes = next->max_pending_bytes;
    s->cfg.max_ttl_seconds = next->max_ttl_seconds;
    s->cfg.max_sessions = next->max_sessions;
    s->cfg.max_sessions_per_chat = next->max_sessions_per_chat;
    s->cfg.max_calls_per_session = next->max_calls_per_session;
    s->cfg.memory_budget_bytes = next->memory_budget_bytes;
    s->budget.cap = (size_t)next->memory_budget_bytes;
    moat_log(MOAT_LOG_INFO, "reloaded",
             "log_level=%d max_connections=%u max_streams_per_connection=%u "
             "max_frame_size=%u token_set=%d",
             (int)s->cfg.log_level, s->cfg.max_connections, s->cfg.max_streams_per_connection,
             s->cfg.max_frame_size, s->cfg.token[0] != '\0');
}

static void on_signal(uv_signal_t *h, int signum)
{
    srv *s = h->data;
    if (signum == SIGHUP) {
        moat_server_config next;
        if (s->reload == NULL || !s->reload(&next, s->reload_ud)) {
            moat_log(MOAT_LOG_ERROR, "reload_failed", "keeping=current");
            return;
        }
        apply_reload(s, &next);
        moat_server_config_free(&next);
        return;
    }
    start_drain(s, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_close_async(uv_async_t *a)
{
    start_drain(a->data, "close");
}

/* Hands every connection's batch of frames, framed and gRPC, to libuv. */
static void flush_all(srv *s)
{
    while (s->dirty != NULL)
        moat__conn_flush(s->dirty);
    moat__grpc_flush_all(s);
}

static void on_idle_check(uv_check_t *h)
{
    srv *s = h->data;
    s->accepted_this_turn = 0;
    if (s->tcp_deferred && !uv_is_closing((uv_handle_t *)&s->tcp)) {
        s->accepted_this_turn++;
        moat__conn_accept((uv_stream_t *)&s->tcp);
    }
    if (s->pipe_deferred && !uv_is_closing((uv_handle_t *)&s->pipe)) {
        s->accepted_this_turn++;
        moat__conn_accept((uv_stream_t *)&s->pipe);
    }
    if (s->grpc_deferred && !uv_is_closing((uv_handle_t *)&s->grpc_tcp)) {
        s->accepted_this_turn++;
        moat__grpc_accept((uv_stream_t *)&s->grpc_tcp);
    }
    s->tcp_deferred = s->pipe_deferred = s->grpc_deferred = false;
    flush_all(s);
    moat__metrics_budget(s->metrics, &s->budget);
    on_drain_check(s);
}

/* The prepare phase comes after the timers and before the loop blocks for I/O, which the check
 * phase does not: frames a timer callback produced (curl's timer runs a whole execd request
 * when execd answers at once, a fresh sandbox's first command among them) would otherwise wait
 * for whatever woke the loop next, up to the next timer a second later. */
static void on_prepare(uv_prepare_t *h)
{
    flush_all(h->data);
}

/* ------------------------------------------------------------ the handle */

/* Binds a TCP listener on hostport ("localhost" is 127.0.0.1). */
static int listen_tcp(srv *s, uv_tcp_t *tcp, bool *on, const char *hostport, const char *what)
{
    char host[256];
    uint16_t port;
    moat_server_split_hostport(hostport, host, sizeof(host), &port);
    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        if (strcmp(host, "localhost") != 0) {
            moat_log(MOAT_LOG_ERROR, "listen_failed", "addr=%s error=\"not an IP address\"",
                     hostport);
            return -1;
        }
        uv_ip4_addr("127.0.0.1", port, (struct sockaddr_in *)&addr);
    }
    uv_tcp_init(s->loop, tcp);
    tcp->data = s;
    *on = true;
    int rc;
    if ((rc = uv_tcp_bind(tcp, (struct sockaddr *)&addr, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)tcp, 1024, on_connection)) != 0) {
        moat_log(MOAT_LOG_ERROR, "listen_failed", "addr=%s error=\"%s\"", hostport,
                 uv_strerror(rc));
        return -1;
    }
    moat_log(MOAT_LOG_INFO, "listening", "addr=%s protocol=%s token_required=%d", hostport, what,
             s->cfg.token[0] != '\0');
    return 0;
}

static int listen_all(srv *s)
{
    int rc;
    if (s->cfg.listen[0] != '\0' &&
        listen_tcp(s, &s->tcp, &s->tcp_on, s->cfg.listen, "framed") != 0)
        return -1;
    if (s->cfg.grpc_listen[0] != '\0' &&
        listen_tcp(s, &s->grpc_tcp, &s->grpc_on, s->cfg.grpc_listen,
                   s->cfg.grpc_tls != NULL ? "grpc+h2+tls" : "grpc+h2c") != 0)
        return -1;
    if (s->cfg.unix_socket[0] != '\0') {
        uv_pipe_init(s->loop, &s->pipe, 0);
        s->pipe.data = s;
        s->pipe_on = true;
        unlink(s->cfg.unix_socket);
        if ((rc = uv_pipe_bind(&s->pipe, s->cfg.unix_socket)) != 0 ||
            (rc = uv_listen((uv_stream_t *)&s->pipe, 1024, on_connection)) != 0) {
            moat_log(MOAT_LOG_ERROR, "listen_failed", "path=%s error=\"%s\"", s->cfg.unix_socket,
                     uv_strerror(rc));
            return -1;
        }
        chmod(s->cfg.unix_socket, 0660);
        moat_log(MOAT_LOG_INFO, "listening", "path=%s token_required=%d", s->cfg.unix_socket,
                 s->cfg.token[0] != '\0');
    }
    return 0;
}

moat_err moat_server_init(moat_server **out, moat_server_config *cfg,
                          const moat_server_runtime_ops *runtime)
{
    *out = NULL;
    srv *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        moat_server_config_free(cfg);
        return MOAT_E_NOMEM;
    }
    s->cfg = *cfg;
    memset(cfg, 0, sizeof(*cfg));
    s->rt_ops = runtime != NULL ? runtime : &moat_server_docker_runtime;
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
        seed = moat_time_mono_ns() ^ (uint64_t)getpid();
    s->failed_hellos = moat_throttle_new(seed);
    s->metrics = moat__metrics_new();
    s->read_buf = malloc(READ_BUF_SIZE);
    if (s->failed_hellos == NULL || s->metrics == NULL || s->read_buf == NULL ||
        uv_loop_init(&s->loop_storage) != 0) {
        moat_log(MOAT_LOG_ERROR, "start_failed", "error=\"out of memory\"");
        moat_throttle_free(s->failed_hellos);
        moat__metrics_free(s->metrics);
        free(s->read_buf);
        moat_server_config_free(&s->cfg);
        free(s);
        return MOAT_E_NOMEM;
    }
    s->loop = &s->loop_storage;
    moat_log_limit *limits[] = {&s->logs.prehello,       &s->logs.calls_refused,
                                &s->logs.create_failed,  &s->logs.ttl_refused,
                                &s->logs.budget_refused, &s->logs.grpc_refused};
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++)
        pthread_mutex_init(&limits[i]->mu, NULL);
    uv_async_init(s->loop, &s->close_async, on_close_async);
    s->close_async.data = s;
    uv_timer_init(s->loop, &s->grace);
    s->grace.data = s;
    uv_unref((uv_handle_t *)&s->grace);
    uv_check_init(s->loop, &s->check);
    s->check.data = s;
    uv_check_start(&s->check, on_idle_check);
    uv_unref((uv_handle_t *)&s->check);
    uv_prepare_init(s->loop, &s->prepare);
    s->prepare.data = s;
    uv_prepare_start(&s->prepare, on_prepare);
    uv_unref((uv_handle_t *)&s->prepare);
    if (moat__handlers_init(s) != MOAT_OK) {
        s->finished = true;
        uv_close((uv_handle_t *)&s->close_async, NULL);
        uv_close((uv_handle_t *)&s->grace, NULL);
        uv_close((uv_handle_t *)&s->check, NULL);
        uv_close((uv_handle_t *)&s->prepare, NULL);
        uv_run(s->loop, UV_RUN_DEFAULT);
        moat_server_free(s);
        return MOAT_E_INVAL;
    }
    *out = s;
    return MOAT_OK;
}

moat_err moat_server_handle_signals(moat_server *s, moat_server_reload_fn reload, void *ud)
{
    s->reload = reload;
    s->reload_ud = ud;
    uv_signal_init(s->loop, &s->sig_term);
    uv_signal_init(s->loop, &s->sig_int);
    uv_signal_init(s->loop, &s->sig_hup);
    s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    s->signals_on = true;
    if (uv_signal_start(&s->sig_term, on_signal, SIGTERM) != 0 ||
        uv_signal_start(&s->sig_int, on_signal, SIGINT) != 0 ||
        uv_signal_start(&s->sig_hup, on_signal, SIGHUP) != 0)
        return MOAT_E_IO;
    return MOAT_OK;
}

moat_err moat_server_listen(moat_server *s)
{
    if (listen_all(s) != 0) {
        s->exit_status = 1;
        return MOAT_E_IO;
    }
    if (moat__cluster_start(s) != MOAT_OK) {
        s->exit_status = 1;
        return MOAT_E_REMOTE;
    }
    if (moat__peers_init(s) != MOAT_OK) {
        s->exit_status = 1;
        return MOAT_E_NOMEM;
    }
    if (s->cfg.metrics_listen[0] != '\0' &&
        moat__metrics_start(s->metrics, s->cfg.metrics_listen) != MOAT_OK)
        moat_log(MOAT_LOG_WARN, "metrics_unavailable", "addr=%s", s->cfg.metrics_listen);
    moat_log(MOAT_LOG_INFO, "started", "version=%s pid=%d state_dir=%s image=%s", MOAT_VERSION,
             (int)getpid(), s->cfg.state_dir, s->cfg.image);
    return MOAT_OK;
}

int moat_server_run(moat_server *s)
{
    uv_run(s->loop, UV_RUN_DEFAULT);
    return s->exit_status;
}

void moat_server_close(moat_server *s, moat_server_close_cb cb, void *ud)
{
    s->close_cb = cb;
    s->close_ud = ud;
    uv_async_send(&s->close_async);
}

void moat_server_free(moat_server *s)
{
    if (s == NULL)
        return;
    if (uv_loop_close(s->loop) != 0)
        moat_log(MOAT_LOG_WARN, "loop_not_empty", "at=exit");
    moat__metrics_free(s->metrics);
    moat_log_limit *limits[] = {&s->logs.prehello,       &s->logs.calls_refused,
                                &s->logs.create_failed,  &s->logs.ttl_refused,
                                &s->logs.budget_refused, &s->logs.grpc_refused};
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++)
        pthread_mutex_destroy(&limits[i]->mu);
    moat_throttle_free(s->failed_hellos);
    moat_server_config_free(&s->cfg);
    free(s->read_buf);
    free(s);
}
