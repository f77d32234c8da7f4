/* The byte streams of seed 001 (OpenSandbox SDK streaming tests), exactly,
 * plus what a real execd sends (shared/reference/opensandbox-execd.md). */
#ifndef MOAT_TEST_BRIDGE_SEED_STREAMS_H
#define MOAT_TEST_BRIDGE_SEED_STREAMS_H

/* POST /command "echo hi" */
static const char SEED_ECHO_HI[] =
    "data: {\"type\":\"init\",\"text\":\"exec-1\",\"timestamp\":1}\n\n"
    "\n"
    "data: {\"type\":\"stdout\",\"text\":\"hi\",\"timestamp\":2}\n\n"
    "not-json\n\n"
    "data: {\"type\":\"result\",\"results\":{\"text\":\"ok\"},\"timestamp\":3}\n\n"
    "data: {\"type\":\"execution_complete\",\"timestamp\":4,\"execution_time\":5}\n\n";

/* POST /session/sess-1/run "pwd" */
static const char SEED_SESS1_PWD[] =
    "event: stdout\n"
    "data: {\"type\":\"stdout\",\"text\":\"/var\",\"timestamp\":1}\n\n"
    "event: execution_complete\n"
    "data: {\"type\":\"execution_complete\",\"timestamp\":2,\"execution_time\":3}\n\n";

/* POST /session/sess-2/run "exit 7" */
static const char SEED_SESS2_EXIT7[] =
    "data: {\"type\":\"init\",\"text\":\"sess-exec-2\",\"timestamp\":1}\n\n"
    "data: {\"type\":\"error\",\"error\":{\"ename\":\"CommandExecError\",\"evalue\":\"7\","
    "\"traceback\":[\"exit status 7\"]},\"timestamp\":2}\n\n";

/* POST /command "exit 7" (the _ErrorTransport) */
static const char SEED_EXIT7[] =
    "data: {\"type\":\"init\",\"text\":\"exec-2\",\"timestamp\":1}\n\n"
    "data: {\"type\":\"error\",\"error\":{\"ename\":\"CommandExecError\",\"evalue\":\"7\","
    "\"traceback\":[\"exit status 7\"]},\"timestamp\":2}\n\n";

/* POST /command "exit null" */
static const char SEED_EXIT_NULL[] =
    "data: {\"type\":\"init\",\"text\":\"exec-null\",\"timestamp\":1}\n\n"
    "data: {\"type\":\"error\",\"error\":{\"ename\":\"CommandExecError\",\"evalue\":\"fork/exec "
    "/usr/bin/bash: resource temporarily unavailable\",\"traceback\":null},\"timestamp\":2}\n\n";

/* A real execd: raw {json}\n\n framing, pings (also after completion),
 * execution_time left out when 0. */
static const char REAL_EXECD_OK[] =
    "{\"type\":\"init\",\"text\":\"3f2b9c0d6a4e4f0c9a1b2c3d4e5f6a7b\",\"timestamp\":1718000000000}"
    "\n\n"
    "{\"type\":\"ping\",\"text\":\"pong\",\"timestamp\":1718000000001}\n\n"
    "{\"type\":\"stdout\",\"text\":\"hello\",\"timestamp\":1718000000105}\n\n"
    "{\"type\":\"stderr\",\"text\":\"warn \\u003cx\\u003e\",\"timestamp\":1718000000106}\n\n"
    "{\"type\":\"execution_complete\",\"timestamp\":1718000000300}\n\n"
    "{\"type\":\"ping\",\"text\":\"pong\",\"timestamp\":1718000001001}\n\n";

/* A real execd's bash-session timeout: init, output, then Gin appends the
 * error body without any LF. */
static const char REAL_EXECD_APPENDED[] =
    "{\"type\":\"init\",\"text\":\"4e0c\",\"timestamp\":1}\n\n"
    "{\"type\":\"stdout\",\"text\":\"working\",\"timestamp\":2}\n\n"
    "{\"code\":\"RUNTIME_ERROR\",\"message\":\"error running in session. timeout after 30s\"}";

#endif
