# cmocka 1.1 prints a failed group setup or teardown but leaves the teardown out of its exit
# status; tests/support's moat_run_group_tests counts both, and this catches any main that
# calls cmocka's runner directly.
set(MOAT_CMOCKA_FAIL_REGEX "GROUP (SETUP|TEARDOWN)")

# moat_test(<name> SOURCES <files…> LIBS <targets…> [LABELS <labels…>] [TIMEOUT <s>])
# A cmocka test executable (with tests/support/moat_test.h) registered with ctest. Labels:
# "unit" (no outside services), "integration" (starts real binaries), "docker" (needs dockerd).
function(moat_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} moat_test_support)
  add_test(NAME ${name} COMMAND ${name})
  if(NOT T_LABELS)
    set(T_LABELS unit)
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
    FAIL_REGULAR_EXPRESSION "${MOAT_CMOCKA_FAIL_REGEX}" ENVIRONMENT "MOAT_BUILD_DIR=${PROJECT_BINARY_DIR};MOAT_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endfunction()

# The memcheck command both valgrind helpers use: leaks and errors are fatal.
# Sets `valgrind_cmd` in the caller's scope.
macro(moat_valgrind_command)
  find_program(VALGRIND valgrind)
  if(NOT VALGRIND)
    message(FATAL_ERROR "valgrind not found: apt-get install valgrind")
  endif()
  set(valgrind_cmd ${VALGRIND} --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite,indirect --track-fds=no --quiet)
endmacro()

# moat_valgrind_test(<name> <target> [args…]): runs an existing test target under
# valgrind (memcheck, leaks and errors fatal). Skipped in sanitizer builds,
# where ASan already watches memory.
function(moat_valgrind_test name target)
  if(MOAT_SANITIZE)
    return()
  endif()
  moat_valgrind_command()
  add_test(NAME ${name} COMMAND ${valgrind_cmd} $<TARGET_FILE:${target}> ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS "valgrind" TIMEOUT 900
    FAIL_REGULAR_EXPRESSION "${MOAT_CMOCKA_FAIL_REGEX}" ENVIRONMENT "MOAT_BUILD_DIR=${PROJECT_BINARY_DIR};MOAT_SOURCE_DIR=${PROJECT_SOURCE_DIR};MOAT_UNDER_VALGRIND=1")
endfunction()

# moat_valgrind_daemon_test(<name> <target> [LABELS <labels…>] [TIMEOUT <s>]): runs an
# existing integration test with the daemons it starts (moatd, moat-execd) under valgrind,
# through MOAT_DAEMON_WRAPPER: each must exit 0 on SIGTERM, i.e. without memory errors or
# definite/indirect leaks. Skipped in sanitizer builds, like moat_valgrind_test.
function(moat_valgrind_daemon_test name target)
  if(MOAT_SANITIZE)
    return()
  endif()
  cmake_parse_arguments(V "" "TIMEOUT" "LABELS" ${ARGN})
  if(NOT V_TIMEOUT)
    set(V_TIMEOUT 300)
  endif()
  moat_valgrind_command()
  # The wrapper is a shell word list in the environment, not a CMake list.
  string(REPLACE ";" " " wrapper "${valgrind_cmd}")
  set(labels valgrind ${V_LABELS})
  add_test(NAME ${name} COMMAND ${target})
  set_tests_properties(${name} PROPERTIES LABELS "${labels}" TIMEOUT ${V_TIMEOUT}
    FAIL_REGULAR_EXPRESSION "${MOAT_CMOCKA_FAIL_REGEX}" ENVIRONMENT "MOAT_BUILD_DIR=${PROJECT_BINARY_DIR};MOAT_SOURCE_DIR=${PROJECT_SOURCE_DIR};MOAT_DAEMON_WRAPPER=${wrapper}")
endfunction()

# moat_fuzz_test(<name> SOURCES <files…> LIBS <targets…> SEEDS <dir> [SECONDS <n>]
#                [INSTRUMENT <library targets…>])
# A libFuzzer target (only with MOAT_FUZZ, which needs clang), run by ctest for
# a bounded time with SEEDS as its read-only seed corpus; new inputs go to a
# scratch corpus in the build tree. Leaks and crashes fail the test. libFuzzer
# steers by coverage, so the INSTRUMENT libraries (the code under test that is
# not among SOURCES) are compiled with coverage counters too.
function(moat_fuzz_test name)
  if(NOT MOAT_FUZZ)
    return()
  endif()
  cmake_parse_arguments(F "" "SEEDS;SECONDS" "SOURCES;LIBS;INSTRUMENT" ${ARGN})
  foreach(lib ${F_INSTRUMENT})
    target_compile_options(${lib} PRIVATE -fsanitize=fuzzer-no-link)
  endforeach()
  if(NOT F_SECONDS)
    set(F_SECONDS 30)
  endif()
  add_executable(${name} ${F_SOURCES})
  target_compile_options(${name} PRIVATE -fsanitize=fuzzer)
  target_link_libraries(${name} PRIVATE ${F_LIBS})
  target_link_options(${name} PRIVATE -fsanitize=fuzzer)
  set(scratch ${CMAKE_CURRENT_BINARY_DIR}/${name}-corpus)
  file(MAKE_DIRECTORY ${scratch})
  add_test(NAME ${name} COMMAND ${name} -max_total_time=${F_SECONDS} -rss_limit_mb=2048
    -timeout=10 -print_final_stats=1 ${scratch} ${F_SEEDS})
  set_tests_properties(${name} PROPERTIES LABELS "fuzz" TIMEOUT 600)
endfunction()
