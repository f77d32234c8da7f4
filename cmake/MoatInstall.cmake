# `cmake --install` of the daemon side, under GNUInstallDirs paths (libmoat, its headers,
# moat.pc, the CMake package and the CLI are installed by src/client):
#   <bindir>/moatd                        the server
#   <libdir>/moat/execd-bundle/           moat-execd with its libraries
#   lib/systemd/system/moatd.service      deploy/moatd.service, with this install's paths
#   <sysconfdir>/moat/moatd.conf.sample   deploy/moatd.conf.sample
#   <docdir>/                             README.md and docs/*.md
install(TARGETS moatd RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES deploy/moatd.conf.sample DESTINATION ${CMAKE_INSTALL_SYSCONFDIR}/moat)
file(GLOB moat_docs ${PROJECT_SOURCE_DIR}/docs/*.md)
install(FILES README.md ${moat_docs} DESTINATION ${CMAKE_INSTALL_DOCDIR})

# The bundle and the unit are made at install time: the unit names the paths of the
# prefix given then (cmake --install --prefix), which configure time does not know.
configure_file(cmake/install-daemon.cmake.in ${PROJECT_BINARY_DIR}/install-daemon.cmake.in @ONLY)
file(GENERATE OUTPUT ${PROJECT_BINARY_DIR}/install-daemon.cmake
     INPUT ${PROJECT_BINARY_DIR}/install-daemon.cmake.in)
install(SCRIPT ${PROJECT_BINARY_DIR}/install-daemon.cmake)

# <build>/execd-bundle, which moatd mounts into sandboxes when run from the build tree (tests,
# benches), follows moat-execd on every build: a stale bundle made every sandbox exit at once.
# Sanitizer builds cannot run from the bundle's library path.
if(NOT MOAT_SANITIZE AND NOT MOAT_FUZZ)
  add_custom_command(
    OUTPUT ${PROJECT_BINARY_DIR}/execd-bundle/moat-execd
    COMMAND ${PROJECT_SOURCE_DIR}/scripts/build-execd-bundle.sh $<TARGET_FILE:moat-execd>
            ${PROJECT_BINARY_DIR}/execd-bundle >/dev/null
    DEPENDS moat-execd ${PROJECT_SOURCE_DIR}/scripts/build-execd-bundle.sh
    COMMENT "execd bundle")
  add_custom_target(execd_bundle ALL DEPENDS ${PROJECT_BINARY_DIR}/execd-bundle/moat-execd)
endif()
