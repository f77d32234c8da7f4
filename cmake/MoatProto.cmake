# Generates C code from proto/ at build time: protoc-c (moat_proto_c, server side)
# and nanopb (moat_proto_nanopb, client side). Nothing generated is committed.
# The gRPC listener's own messages (google.rpc.Status and what it holds, grpc.health.v1,
# grpc.reflection.v1alpha) are protoc-c only; server reflection embeds the descriptors of every
# service moatd serves (moat_descriptors.c, made from protoc's descriptor set).
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
set(MOAT_PROTO_GRPC_NAMES google/protobuf/any google/rpc/status google/rpc/error_details
  grpc/health/v1/health grpc/reflection/v1alpha/reflection)
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

# Server reflection's answers: the FileDescriptorProtos of the services moatd serves, with their
# imports, as protoc serializes them, and which file defines each symbol.
set(reflected_protos ${proto_files} ${MOAT_PROTO_DIR}/grpc/health/v1/health.proto
  ${MOAT_PROTO_DIR}/grpc/reflection/v1alpha/reflection.proto)
add_custom_command(
  OUTPUT ${MOAT_GEN_DIR}/c/moat_descriptors.c
  COMMAND ${PROTOC} -I${MOAT_PROTO_DIR} --include_imports
          --descriptor_set_out=${MOAT_GEN_DIR}/moat.desc ${reflected_protos}
  COMMAND /usr/bin/python3 ${PROJECT_SOURCE_DIR}/src/grpc/descriptor_table.py
          ${MOAT_GEN_DIR}/moat.desc ${MOAT_GEN_DIR}/c/moat_descriptors.c
  DEPENDS ${reflected_protos} ${PROJECT_SOURCE_DIR}/src/grpc/descriptor_table.py
  COMMENT "protoc: the descriptors server reflection serves"
  VERBATIM)
add_library(moat_proto_descriptors STATIC ${MOAT_GEN_DIR}/c/moat_descriptors.c)
target_include_directories(moat_proto_descriptors PRIVATE ${PROJECT_SOURCE_DIR}/src
  ${PROJECT_SOURCE_DIR}/include)
