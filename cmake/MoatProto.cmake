# Generates C code from proto/ at build time: protoc-c (moat_proto_c, server side)
# and nanopb (moat_proto_nanopb, client side). Nothing generated is committed.
# The gRPC listener's own messages (google.rpc.Status and what it holds) are protoc-c only.
set(MOAT_PROTO_DIR ${PROJECT_SOURCE_DIR}/proto)
set(MOAT_PROTO_NAMES frame sandbox exec files health)
set(MOAT_GEN_DIR ${PROJECT_BINARY_DIR}/gen)
file(MAKE_DIRECTORY ${MOAT_GEN_DIR}/c ${MOAT_GEN_DIR}/nanopb)

set(proto_files "")
set(c_sources "")
set(nanopb_sources "")
foreach(name ${MOAT_PROTO_NAMES})
  list(APPEND proto_files ${MOAT_PROTO_DIR}/moat/v1/${name}.proto)
  list(APPEND c_sources ${MOAT_GEN_DIR}/c/moat/v1/${name}.pb-c.c)
  list(APPEND nanopb_sources ${MOAT_GEN_DIR}/nanopb/moat/v1/${name}.pb.c)
endforeach()
set(MOAT_PROTO_GRPC_NAMES google/protobuf/any google/rpc/status google/rpc/error_details)
set(grpc_proto_files "")
set(grpc_c_sources "")
foreach(name ${MOAT_PROTO_GRPC_NAMES})
  list(APPEND grpc_proto_files ${MOAT_PROTO_DIR}/${name}.proto)
  list(APPEND grpc_c_sources ${MOAT_GEN_DIR}/c/${name}.pb-c.c)
endforeach()
file(GLOB nanopb_options ${MOAT_PROTO_DIR}/moat/v1/*.options)

add_custom_command(
  OUTPUT ${c_sources}
  COMMAND ${PROTOC_C} -I${MOAT_PROTO_DIR} --c_out=${MOAT_GEN_DIR}/c ${proto_files}
  DEPENDS ${proto_files}
  COMMENT "protoc-c: generating server-side protobuf code"
  VERBATIM)
add_custom_command(
  OUTPUT ${grpc_c_sources}
  COMMAND ${PROTOC_C} -I${MOAT_PROTO_DIR} --c_out=${MOAT_GEN_DIR}/c ${grpc_proto_files}
  DEPENDS ${grpc_proto_files}
  COMMENT "protoc-c: generating the gRPC listener's google.rpc messages"
  VERBATIM)
add_custom_command(
  OUTPUT ${nanopb_sources}
  COMMAND ${PROTOC} --plugin=protoc-gen-nanopb=${PROTOC_GEN_NANOPB} -I${MOAT_PROTO_DIR}
          "--nanopb_opt=-I${MOAT_PROTO_DIR}" --nanopb_out=${MOAT_GEN_DIR}/nanopb ${proto_files}
  DEPENDS ${proto_files} ${nanopb_options}
  COMMENT "nanopb: generating client-side protobuf code"
  VERBATIM)

add_library(moat_proto_c STATIC ${c_sources})
target_include_directories(moat_proto_c SYSTEM PUBLIC ${MOAT_GEN_DIR}/c)
target_link_libraries(moat_proto_c PUBLIC PkgConfig::PROTOBUF_C)
target_compile_options(moat_proto_c PRIVATE -w)

add_library(moat_proto_grpc_c STATIC ${grpc_c_sources})
target_include_directories(moat_proto_grpc_c SYSTEM PUBLIC ${MOAT_GEN_DIR}/c)
target_link_libraries(moat_proto_grpc_c PUBLIC PkgConfig::PROTOBUF_C)
target_compile_options(moat_proto_grpc_c PRIVATE -w)

add_library(moat_proto_nanopb STATIC ${nanopb_sources})
set_target_properties(moat_proto_nanopb PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_include_directories(moat_proto_nanopb SYSTEM PUBLIC ${MOAT_GEN_DIR}/nanopb)
target_link_libraries(moat_proto_nanopb PUBLIC nanopb::protobuf-nanopb-static)
target_compile_options(moat_proto_nanopb PRIVATE -w)
