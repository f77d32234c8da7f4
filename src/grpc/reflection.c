/* grpc.reflection.v1alpha answers from the embedded descriptors (see reflection.h). */
#include "grpc/reflection.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/reflection/v1alpha/reflection.pb-c.h"

static int compare_symbol(const void *key, const void *elem)
{
    return strcmp(key, ((const moat_grpc_descriptor_symbol *)elem)->name);
}

static int file_named(const char *name)
{
    for (size_t i = 0; i < moat_grpc_descriptor_file_count; i++)
        if (strcmp(moat_grpc_descriptor_files[i].name, name) == 0)
            return (int)i;
    return -1;
}

static int file_defining(const char *symbol)
{
    const moat_grpc_descriptor_symbol *s =
        bsearch(symbol, moat_grpc_descriptor_symbols, moat_grpc_descriptor_symbol_count, sizeof(*s),
                compare_symbol);
    return s != NULL ? s->file : -1;
}

/* The file and everything it imports, each once: the file first, as clients expect. */
static void add_file(int file, bool *seen, ProtobufCBinaryData *list, size_t *n)
{
    if (seen[file])
        return;
    seen[file] = true;
    const moat_grpc_descriptor_file *f = &moat_grpc_descriptor_files[file];
    list[(*n)++] = (ProtobufCBinaryData){f->len, (uint8_t *)f->data};
    for (const int *d = f->deps; *d >= 0; d++)
        add_file(*d, seen, list, n);
}

moat_err moat_grpc_reflection_answer(const uint8_t *req, size_t len, uint8_t **out, size_t *out_len)
{
    Grpc__Reflection__V1alpha__ServerReflectionRequest *rq =
        grpc__reflection__v1alpha__server_reflection_request__unpack(NULL, len, req);
    if (rq == NULL)
        return MOAT_E_INVAL;
    Grpc__Reflection__V1alpha__ServerReflectionResponse resp =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__FileDescriptorResponse files =
        GRPC__REFLECTION__V1ALPHA__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__ListServiceResponse list =
        GRPC__REFLECTION__V1ALPHA__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__ErrorResponse error =
        GRPC__REFLECTION__V1ALPHA__ERROR_RESPONSE__INIT;
    size_t nfiles = moat_grpc_descriptor_file_count, nservices = moat_grpc_descriptor_service_count;
    ProtobufCBinaryData *file_list = calloc(nfiles, sizeof(*file_list));
    bool *seen = calloc(nfiles, sizeof(*seen));
    Grpc__Reflection__V1alpha__ServiceResponse *services = calloc(nservices, sizeof(*services));
    Grpc__Reflection__V1alpha__ServiceResponse **service_ptrs =
        calloc(nservices, sizeof(*service_ptrs));
    moat_err err = MOAT_E_NOMEM;
    if (file_list == NULL || seen == NULL || services == NULL || service_ptrs == NULL)
        goto done;
    resp.valid_host = rq->host;
    resp.original_request = rq;
    int file = -1;
    switch (rq->message_request_case) {
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        for (size_t i = 0; i < nservices; i++) {
            grpc__reflection__v1alpha__service_response__init(&services[i]);
            services[i].name = (char *)moat_grpc_descriptor_services[i];
            service_ptrs[i] = &services[i];
        }
        list.n_service = nservices;
        list.service = service_ptrs;
        resp.message_response_case =
            GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        resp.list_services_response = &list;
        break;
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        file = file_named(rq->file_by_filename);
        break;
    case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        file = file_defining(rq->file_containing_symbol);
        break;
    default:
        /* moat's schema declares no extensions. */
        error.error_code = MOAT_CODE_UNIMPLEMENTED;
        error.error_message = "moatd's services use no extensions";
        break;
    }
    if (resp.message_response_case ==
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE__NOT_SET) {
        if (file >= 0) {
            size_t n = 0;
            add_file(file, seen, file_list, &n);
            files.n_file_descriptor_proto = n;
            files.file_descriptor_proto = file_list;
            resp.message_response_case =
                GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
            resp.file_descriptor_response = &files;
        } else {
            if (error.error_code == 0) {
                error.error_code = MOAT_CODE_NOT_FOUND;
                error.error_message = "no such file or symbol";
            }
            resp.message_response_case =
                GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
            resp.error_response = &error;
        }
    }
    *out_len = grpc__reflection__v1alpha__server_reflection_response__get_packed_size(&resp);
    *out = malloc(*out_len > 0 ? *out_len : 1);
    if (*out != NULL) {
        grpc__reflection__v1alpha__server_reflection_response__pack(&resp, *out);
        err = MOAT_OK;
    }
done:
    free(file_list);
    free(seen);
    free(services);
    free(service_ptrs);
    grpc__reflection__v1alpha__server_reflection_request__free_unpacked(rq, NULL);
    return err;
}
