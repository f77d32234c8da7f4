/* moat grpc reflection: grpc.reflection.v1alpha's answers, from the descriptors of the services
 * moatd serves (generated at build time into moat_descriptors.c). No I/O, no state: one request
 * message in, one response message out. */
#ifndef MOAT_GRPC_REFLECTION_H
#define MOAT_GRPC_REFLECTION_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One .proto file: its FileDescriptorProto as protoc serialized it, and the indexes of the
 * files it imports (ending with -1). Static storage. */
typedef struct moat_grpc_descriptor_file {
    const char *name;
    const uint8_t *data;
    size_t len;
    const int *deps;
} moat_grpc_descriptor_file;

/* A fully-qualified symbol (service, method, message, enum) and the file defining it. */
typedef struct moat_grpc_descriptor_symbol {
    const char *name;
    int file;
} moat_grpc_descriptor_symbol;

extern const moat_grpc_descriptor_file moat_grpc_descriptor_files[];
extern const size_t moat_grpc_descriptor_file_count;
/* Sorted by name (strcmp). */
extern const moat_grpc_descriptor_symbol moat_grpc_descriptor_symbols[];
extern const size_t moat_grpc_descriptor_symbol_count;
extern const char *const moat_grpc_descriptor_services[];
extern const size_t moat_grpc_descriptor_service_count;

/* The gRPC path of the reflection stream. */
#define MOAT_GRPC_REFLECTION_PATH "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

/* Answers one ServerReflectionRequest (req[0..len)): *out (from malloc, the caller frees it)
 * gets the packed ServerReflectionResponse, *out_len its size. A file is sent with every file
 * it imports, directly or not; an unknown file or symbol, or an extension question, is an
 * ErrorResponse (NOT_FOUND, UNIMPLEMENTED) inside a response, as the protocol has it.
 * MOAT_E_INVAL when req is not a ServerReflectionRequest, MOAT_E_NOMEM. */
moat_err moat_grpc_reflection_answer(const uint8_t *req, size_t len, uint8_t **out,
                                     size_t *out_len);

#ifdef __cplusplus
}
#endif
#endif
