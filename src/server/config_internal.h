/* What config.c (the key table: defaults, the file, MOAT_* variables, flags, --help) and
 * config_finish.c (the checks and derived values once all are read, and the value helpers)
 * share. Inside moat_server_config only; server.h is its API. */
#ifndef MOAT_SERVER_CONFIG_INTERNAL_H
#define MOAT_SERVER_CONFIG_INTERNAL_H

#include "server/server.h"

#include <stddef.h>

/* config.c. Formats the message into err (errlen bytes, the caller's); nothing when err is
 * NULL or errlen 0. */
void moat__config_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
