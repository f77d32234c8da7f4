# Finds every dependency moat uses and fails with the Debian package that provides it.
find_package(PkgConfig)
if(NOT PKG_CONFIG_FOUND)
  message(FATAL_ERROR "pkg-config not found: apt-get install pkg-config")
endif()

# moat_pkg(<prefix> <pkg-config module> <debian package>)
function(moat_pkg prefix module debian)
  pkg_check_modules(${prefix} IMPORTED_TARGET GLOBAL ${module})
  if(NOT ${prefix}_FOUND)
    message(FATAL_ERROR "${module} not found: apt-get install ${debian} (or run scripts/install-deps.sh)")
  endif()
endfunction()

# moat_program(<var> <program> <debian package>)
function(moat_program var program debian)
  find_program(${var} ${program})
  if(NOT ${var})
    message(FATAL_ERROR "${program} not found: apt-get install ${debian} (or run scripts/install-deps.sh)")
  endif()
endfunction()

find_package(Threads REQUIRED)
moat_pkg(PROTOBUF_C libprotobuf-c libprotobuf-c-dev)
# TLS: the gRPC listener's (src/grpc/tls.c), and libcurl's when scripts/build-curl.sh builds it
moat_pkg(GNUTLS gnutls libgnutls28-dev)

# moat_curl: the libcurl moat's modules link. By default the HTTP(S)-only static
# build of scripts/build-curl.sh (Debian's curl source and patches), run here
# when it is missing; -DMOAT_SYSTEM_CURL=ON links Debian's full shared libcurl.
option(MOAT_SYSTEM_CURL "Link Debian's libcurl instead of scripts/build-curl.sh's build" OFF)
if(MOAT_SYSTEM_CURL)
  moat_pkg(CURL libcurl libcurl4-openssl-dev)
  add_library(moat_curl INTERFACE)
  target_link_libraries(moat_curl INTERFACE PkgConfig::CURL)
else()
  set(MOAT_CURL_DIR "${PROJECT_SOURCE_DIR}/third_party/curl" CACHE PATH
      "Where scripts/build-curl.sh builds libcurl")
  execute_process(COMMAND "${PROJECT_SOURCE_DIR}/scripts/build-curl.sh" "${MOAT_CURL_DIR}"
                  RESULT_VARIABLE moat_curl_result)
  if(NOT moat_curl_result EQUAL 0)
    message(FATAL_ERROR "scripts/build-curl.sh failed: run scripts/install-deps.sh, "
                        "or configure with -DMOAT_SYSTEM_CURL=ON")
  endif()
  moat_pkg(NETTLE nettle nettle-dev)
  add_library(moat_curl STATIC IMPORTED GLOBAL)
  set_target_properties(moat_curl PROPERTIES
    IMPORTED_LOCATION "${MOAT_CURL_DIR}/install/lib/libcurl.a"
    INTERFACE_INCLUDE_DIRECTORIES "${MOAT_CURL_DIR}/install/include")
  target_link_libraries(moat_curl INTERFACE PkgConfig::GNUTLS PkgConfig::NETTLE Threads::Threads)
endif()

moat_pkg(UUID uuid uuid-dev)
moat_pkg(CMOCKA cmocka libcmocka-dev)
moat_pkg(LIBUV libuv libuv1-dev)
moat_pkg(CJSON libcjson libcjson-dev)
moat_pkg(MHD libmicrohttpd libmicrohttpd-dev)
# WebSocket framing (no I/O): execd's terminals and the bridge's side of them; Debian ships no
# pkg-config file for it
find_package(wslay CONFIG QUIET)
if(NOT TARGET wslay)
  message(FATAL_ERROR "libwslay not found: apt-get install libwslay-dev (or run scripts/install-deps.sh)")
endif()
moat_pkg(SQLITE sqlite3 libsqlite3-dev)
moat_pkg(NGHTTP2 libnghttp2 libnghttp2-dev)

find_package(nanopb CONFIG QUIET)
if(NOT nanopb_FOUND)
  message(FATAL_ERROR "nanopb not found: apt-get install libnanopb-dev nanopb")
endif()

moat_program(PROTOC protoc protobuf-compiler)
moat_program(PROTOC_C protoc-c protobuf-c-compiler)
moat_program(PROTOC_GEN_NANOPB protoc-gen-nanopb nanopb)
