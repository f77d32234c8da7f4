/* Loads the golden vectors: tests/vectors/<name>.hex, hex text where '#'
 * starts a comment and whitespace is ignored. Test helper, header-only. */
#ifndef MOAT_TEST_VECTORS_H
#define MOAT_TEST_VECTORS_H

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const moat_vector_names[] = {
    "hello",
    "hello_ack",
    "create_session_call",
    "create_session_request",
    "run_command_call",
    "run_command_request",
    "exec_init",
    "exec_output",
    "exec_exit",
    "end_error",
    "window_update",
    "ping",
    "interactive_start",
    "interactive_stdin",
    "interactive_resize",
};
#define MOAT_VECTOR_COUNT (sizeof moat_vector_names / sizeof moat_vector_names[0])

/* Returns malloc'ed bytes (caller frees) and their length, or NULL. */
static inline unsigned char *moat_vector_load(const char *name, size_t *len)
{
    const char *dir = getenv("MOAT_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/vectors/%s.hex", dir ? dir : ".", name);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, n = 0;
    unsigned char *out = malloc(cap);
    int c, hi = -1;
    bool comment = false;
    while (out && (c = fgetc(f)) != EOF) {
        if (comment) {
            comment = c != '\n';
            continue;
        }
        if (c == '#') {
            comment = true;
            continue;
        }
        if (isspace(c))
            continue;
        if (!isxdigit(c)) {
            free(out);
            out = NULL;
            break;
        }
        int v = isdigit(c) ? c - '0' : tolower(c) - 'a' + 10;
        if (hi < 0) {
            hi = v;
            continue;
        }
        if (n == cap)
            break;
        out[n++] = (unsigned char)(hi << 4 | v);
        hi = -1;
    }
    fclose(f);
    if (out && hi >= 0) {
        free(out);
        out = NULL;
    }
    *len = n;
    return out;
}

#endif
