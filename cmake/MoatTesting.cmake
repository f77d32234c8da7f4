# moat_test(<name> SOURCES <files…> LIBS <targets…> [LABELS <labels…>] [TIMEOUT <s>])
# A cmocka test executable registered with ctest. Labels: "unit" (no outside
# services), "integration" (starts real binaries), "docker" (needs dockerd).
function(moat_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} PkgConfig::CMOCKA)
  add_test(NAME ${name} COMMAND ${name})
  if(NOT T_LABELS)
    set(T_LABELS unit)
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
    ENVIRONMENT "MOAT_BUILD_DIR=${PROJECT_BINARY_DIR};MOAT_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endfunction()

# moat_valgrind_test(<name> <target> [args…]): runs an existing test target under
# valgrind (memcheck, leaks and errors fatal). Skipped in sanitizer builds,
# where ASan already watches memory.
function(moat_valgrind_test name target)
  if(MOAT_SANITIZE)
    return()
  endif()
  find_program(VALGRIND valgrind)
  if(NOT VALGRIND)
    message(FATAL_ERROR "valgrind not found: apt-get install valgrind")
  endif()
  add_test(NAME ${name} COMMAND ${VALGRIND} --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite,indirect --track-fds=no --quiet $<TARGET_FILE:${target}> ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS "valgrind" TIMEOUT 900
    ENVIRONMENT "MOAT_BUILD_DIR=${PROJECT_BINARY_DIR};MOAT_SOURCE_DIR=${PROJECT_SOURCE_DIR};MOAT_UNDER_VALGRIND=1")
endfunction()
