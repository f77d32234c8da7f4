/* The one list of the v1 methods (the services in proto/moat/v1, then grpc.health.v1), one line
 * each, in schema order.
 * Owned by rpc: rpc.h makes the method ids of it and rpc.c its method table, whose names and
 * message types come from protobuf-c's service descriptors. The last column is how moatd serves
 * the method (src/server/handlers.c); rpc ignores it, so that adding a method is this one line.
 *
 * Columns: id (MOAT_RPC_<id>), service (moat__v1__<service>__descriptor; grpc_health is
 * grpc.health.v1.Health, the standard health service, rpc.c), the method's name in the schema,
 * its shape (protobuf-c does not record which side streams): UNARY, SERVER_STREAM
 * (`returns (stream …)`) or BIDI_STREAM (a stream both ways), and moatd's handler. */
#ifndef MOAT_RPC_METHODS_H
#define MOAT_RPC_METHODS_H

/* clang-format off */
#define MOAT_RPC_METHODS(X)                                                                                           \
    X(SANDBOXES_CREATE_SESSION, sandboxes, "CreateSession",    UNARY,         DIRECT(moat__sandboxes_create))         \
    X(SANDBOXES_GET_SESSION,    sandboxes, "GetSession",       UNARY,         DIRECT(moat__sandboxes_get))            \
    X(SANDBOXES_LIST_SESSIONS,  sandboxes, "ListSessions",     UNARY,         DIRECT(moat__sandboxes_list))           \
    X(SANDBOXES_RENEW_SESSION,  sandboxes, "RenewSession",     UNARY,         DIRECT(moat__sandboxes_renew))          \
    X(SANDBOXES_STOP_SESSION,   sandboxes, "StopSession",      UNARY,         DIRECT(moat__sandboxes_stop))           \
    X(EXEC_RUN_COMMAND,         exec,      "RunCommand",       SERVER_STREAM, SESSION(moat__exec_run_command))        \
    X(EXEC_RUN_IN_SHELL,        exec,      "RunInShell",       SERVER_STREAM, SESSION(moat__exec_run_in_shell))       \
    X(EXEC_CREATE_SHELL,        exec,      "CreateShell",      UNARY,         BRIDGE(moat__exec_create_shell))        \
    X(EXEC_DELETE_SHELL,        exec,      "DeleteShell",      UNARY,         BRIDGE(moat__exec_delete_shell))        \
    X(EXEC_INTERRUPT,           exec,      "Interrupt",        UNARY,         BRIDGE_UNCOUNTED(moat__exec_interrupt)) \
    X(EXEC_GET_COMMAND_STATUS,  exec,      "GetCommandStatus", UNARY,         BRIDGE(moat__exec_command_status))      \
    X(EXEC_GET_COMMAND_LOGS,    exec,      "GetCommandLogs",   UNARY,         BRIDGE(moat__exec_command_logs))        \
    X(EXEC_ATTACH,              exec,      "Attach",           SERVER_STREAM, SESSION(moat__exec_attach))             \
    X(EXEC_INTERACTIVE,         exec,      "Interactive",      BIDI_STREAM,   DIRECT(moat__exec_interactive))         \
    X(FILES_STAT,               files,     "Stat",             UNARY,         BRIDGE(moat__files_stat))               \
    X(FILES_LIST,               files,     "List",             UNARY,         BRIDGE(moat__files_list))               \
    X(FILES_READ,               files,     "Read",             SERVER_STREAM, SESSION(moat__files_read))              \
    X(FILES_WRITE,              files,     "Write",            UNARY,         SESSION(moat__files_write))             \
    X(FILES_REMOVE,             files,     "Remove",           UNARY,         BRIDGE(moat__files_remove))             \
    X(FILES_MOVE,               files,     "Move",             UNARY,         BRIDGE(moat__files_move))               \
    X(FILES_MKDIR,              files,     "Mkdir",            UNARY,         BRIDGE(moat__files_mkdir))              \
    X(FILES_CHMOD,              files,     "Chmod",            UNARY,         BRIDGE(moat__files_chmod))              \
    X(HEALTH_CHECK,             health,    "Check",            UNARY,         DIRECT(moat__health_check))             \
    X(GRPC_HEALTH_CHECK,        grpc_health, "Check",          UNARY,         DIRECT(moat__grpc_health_check))        \
    X(GRPC_HEALTH_WATCH,        grpc_health, "Watch",          SERVER_STREAM, DIRECT(moat__grpc_health_watch))
/* clang-format on */

#endif
