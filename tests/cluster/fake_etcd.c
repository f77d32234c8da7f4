#include "fake_etcd.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

typedef struct upload {
    char data[4096];
    size_t len;
} upload;

static ssize_t spaces(void *cls, uint64_t pos, char *buf, size_t max)
{
    fake_etcd *f = cls;
    if (pos >= f->huge_bytes)
        return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = f->huge_bytes - pos < max ? (size_t)(f->huge_bytes - pos) : max;
    memset(buf, ' ', n);
    return (ssize_t)n;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_size, void **con_cls)
{
    (void)method;
    (void)version;
    fake_etcd *f = cls;
    upload *up = *con_cls;
    if (up == NULL) {
        up = calloc(1, sizeof(*up));
        *con_cls = up;
        return up != NULL ? MHD_YES : MHD_NO;
    }
    if (*upload_size > 0) {
        size_t room = sizeof(up->data) - 1 - up->len;
        size_t n = *upload_size < room ? *upload_size : room;
        memcpy(up->data + up->len, upload_data, n);
        up->len += n;
        *upload_size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(&f->mu);
    f->requests++;
    snprintf(f->last_path, sizeof(f->last_path), "%s", url);
    memcpy(f->last_body, up->data, up->len + 1);
    fake_etcd_mode mode = f->mode;
    while (mode == FAKE_ETCD_HANG && !f->stopping)
        pthread_cond_wait(&f->cv, &f->mu);
    int status = f->status;
    char body[sizeof(f->body)];
    memcpy(body, f->body, sizeof(body));
    pthread_mutex_unlock(&f->mu);
    if (mode == FAKE_ETCD_CLOSE || mode == FAKE_ETCD_HANG)
        return MHD_NO;
    struct MHD_Response *r =
        mode == FAKE_ETCD_HUGE
            ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 65536, spaces, f, NULL)
            : MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    free(*con_cls);
    *con_cls = NULL;
}

int fake_etcd_start(fake_etcd *f)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->status = 200;
    strcpy(f->body, "{}");
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
                         NULL, handler, f, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                         MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
    if (d == NULL)
        return -1;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    f->daemon = d;
    f->port = info != NULL ? info->port : 0;
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d", f->port);
    return f->port > 0 ? 0 : -1;
}

void fake_etcd_set(fake_etcd *f, fake_etcd_mode mode, int status, const char *body)
{
    pthread_mutex_lock(&f->mu);
    f->mode = mode;
    f->status = status;
    snprintf(f->body, sizeof(f->body), "%s", body != NULL ? body : "");
    pthread_mutex_unlock(&f->mu);
}

int fake_etcd_requests(fake_etcd *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->requests;
    pthread_mutex_unlock(&f->mu);
    return n;
}

void fake_etcd_stop(fake_etcd *f)
{
    pthread_mutex_lock(&f->mu);
    f->stopping = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    if (f->daemon != NULL)
        MHD_stop_daemon(f->daemon);
    f->daemon = NULL;
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
}
