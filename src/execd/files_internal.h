/* What files.c (the metadata and directory endpoints, and the router) and files_transfer.c
 * (download, upload, write at an offset) share. Inside execd only; internal.h is the rest. */
#ifndef MOAT_EXECD_FILES_INTERNAL_H
#define MOAT_EXECD_FILES_INTERNAL_H

#include "internal.h"

#include <stdint.h>
#include <sys/types.h>

/* ---- files.c ---- */
/* Expands a client path and makes it absolute: malloc'd (caller frees), or NULL with the HTTP
 * status (400 for a bad path, 500 when out of memory) and a message. */
char *xd_files_resolve_path(const char *in, unsigned *status, char *msg, size_t msglen);
/* xd_files_resolve_path that answers its failure (400 or 500) in *ret and returns NULL; the
 * path is malloc'd, the caller frees it. */
char *xd_files_client_path(struct MHD_Connection *conn, const char *in, enum MHD_Result *ret);
/* Answers errno e of operation what on path: 404 FILE_NOT_FOUND for ENOENT/ENOTDIR, else 500. */
enum MHD_Result xd_files_errno_error(struct MHD_Connection *conn, int e, const char *what,
                                     const char *path);
/* Creates path's missing parent directories with mode, best effort (path is restored). */
void xd_files_mkdir_parents(char *path, mode_t mode);
/* chmod (mode 0: none) and lchown by names; unknown names are ignored. 0 or an errno value. */
int xd_files_apply_perm(const char *path, const char *owner, const char *group, uint32_t mode);

/* ---- files_transfer.c: the endpoints the router hands a complete request ---- */
/* GET /files/download: the whole file, a byte Range or a window of lines. */
enum MHD_Result xd_files_download(struct MHD_Connection *conn);
/* POST /files/upload once the multipart body is in: moves each part into place. */
enum MHD_Result xd_files_upload_done(struct MHD_Connection *conn, xd_req *r);
/* POST /files/write once the body is in: closes the file and answers. */
enum MHD_Result xd_files_write_done(struct MHD_Connection *conn, xd_req *r);

#endif
