# The installed package (label cpu). Included by tests/CMakeLists.txt, this file adds the test;
# run with `cmake -P` it installs BUILD_DIR into WORK_DIR/prefix and checks the tree: the files
# installed, each public header compiling alone with only the prefix's include directory and
# reaching no third-party header, a C++ consumer built with find_package, a C consumer built with
# pkg-config, and the installed command line finding its shipped data directory.
if(CMAKE_SCRIPT_MODE_FILE)
  function(run_checked)
    cmake_parse_arguments(PARSE_ARGV 0 RUN "" "WORKING_DIRECTORY;OUTPUT" "COMMAND")
    if(NOT DEFINED RUN_WORKING_DIRECTORY)
      set(RUN_WORKING_DIRECTORY ${WORK_DIR})
    endif()
    execute_process(COMMAND ${RUN_COMMAND} WORKING_DIRECTORY ${RUN_WORKING_DIRECTORY}
                    RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
    list(JOIN RUN_COMMAND " " command_line)
    message(STATUS "${command_line}\n${out}${err}")
    if(NOT status EQUAL 0)
      message(FATAL_ERROR "exit status ${status}: ${command_line}\n${out}${err}")
    endif()
    if(DEFINED RUN_OUTPUT)
      set(${RUN_OUTPUT} "${out}" PARENT_SCOPE)
    endif()
  endfunction()

  set(prefix ${WORK_DIR}/prefix)
  file(REMOVE_RECURSE ${WORK_DIR})
  file(MAKE_DIRECTORY ${WORK_DIR})
  run_checked(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})

  set(headers export.h sigattn.h sigattn.hpp version.h)
  file(GLOB installed_headers RELATIVE ${prefix}/include ${prefix}/include/*
       ${prefix}/include/*/*)
  list(TRANSFORM headers PREPEND sigattn/ OUTPUT_VARIABLE expected_headers)
  list(SORT installed_headers)
  if(NOT installed_headers STREQUAL "sigattn;${expected_headers}")
    message(FATAL_ERROR "installed include/ holds '${installed_headers}', expected only the "
                        "public headers '${expected_headers}'")
  endif()
  foreach(required ${LIBDIR}/libsigattn.so ${LIBDIR}/libsigattn.so.${VERSION_MAJOR} bin/sigattn
                   ${LIBDIR}/cmake/sigattn/sigattnConfig.cmake
                   ${LIBDIR}/cmake/sigattn/sigattnConfigVersion.cmake
                   ${LIBDIR}/pkgconfig/sigattn.pc share/sigattn)
    if(NOT EXISTS ${prefix}/${required})
      message(FATAL_ERROR "${prefix}/${required} was not installed")
    endif()
  endforeach()

  # Each header included alone, with only the prefix's include directory; the dependency list
  # names every header reached, none of which may belong to a third-party library.
  function(check_header header language)
    set(source ${WORK_DIR}/include_${header}.${language})
    file(WRITE ${source} "#include <sigattn/${header}>\nint main(void) { return 0; }\n")
    set(compile ${ARGN} -pedantic -Wall -Wextra -Werror -I${prefix}/include ${source})
    run_checked(COMMAND ${compile} -fsyntax-only)
    run_checked(COMMAND ${compile} -M OUTPUT deps)
    if(deps MATCHES "(fmt|nlohmann|sqlite3|cuda|nvrtc|xxhash|CLI)[^ ]*\\.h")
      message(FATAL_ERROR "sigattn/${header} includes ${CMAKE_MATCH_0}:\n${deps}")
    endif()
  endfunction()
  foreach(header ${headers})
    if(NOT header MATCHES "\\.hpp$")
      check_header(${header} c ${C_COMPILER} -std=c99)
    endif()
    check_header(${header} cpp ${CXX_COMPILER} -std=c++17)
  endforeach()

  # A library built with sanitizers needs their runtimes linked into its consumers too.
  run_checked(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/cxx_consumer -B ${WORK_DIR}/cxx_consumer
                      -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
                      -DCMAKE_PREFIX_PATH=${prefix} -DSIGATTN_EXPECTED_VERSION=${VERSION}
                      "-DCMAKE_EXE_LINKER_FLAGS=${SANITIZE_FLAGS}")
  run_checked(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/cxx_consumer)
  run_checked(COMMAND ${WORK_DIR}/cxx_consumer/cxx_consumer)
  if(STATIC)
    run_checked(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/cxx_consumer -B ${WORK_DIR}/cxx_static
                        -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
                        -DCMAKE_PREFIX_PATH=${prefix} -DSIGATTN_TARGET=sigattn::sigattn_static
                        "-DCMAKE_EXE_LINKER_FLAGS=${SANITIZE_FLAGS}")
    run_checked(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/cxx_static)
    run_checked(COMMAND ${WORK_DIR}/cxx_static/cxx_consumer)
  endif()

  run_checked(COMMAND ${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${prefix}/${LIBDIR}/pkgconfig
                      ${PKG_CONFIG} --cflags --libs sigattn OUTPUT pkg_flags)
  separate_arguments(pkg_flags UNIX_COMMAND "${pkg_flags}")
  run_checked(COMMAND ${C_COMPILER} -std=c99 -pedantic -Wall -Wextra -Werror
                      ${SOURCE_DIR}/c_consumer.c ${pkg_flags} -Wl,-rpath,${prefix}/${LIBDIR}
                      ${SANITIZE_FLAGS} -o ${WORK_DIR}/c_consumer)
  run_checked(COMMAND ${WORK_DIR}/c_consumer)

  run_checked(COMMAND ${prefix}/bin/sigattn --version OUTPUT cli_version)
  string(STRIP "${cli_version}" cli_version)
  if(NOT cli_version STREQUAL VERSION)
    message(FATAL_ERROR "installed sigattn --version prints '${cli_version}', expected ${VERSION}")
  endif()
  run_checked(COMMAND ${CMAKE_COMMAND} -E env --unset=SIGATTN_DATA_DIR ${prefix}/bin/sigattn
                      doctor --json OUTPUT doctor)
  string(JSON shipped GET "${doctor}" shipped_data directory)
  file(REAL_PATH ${prefix}/share/sigattn expected_shipped)
  if(NOT shipped STREQUAL expected_shipped)
    message(FATAL_ERROR "installed sigattn looks for shipped data in ${shipped}, not in "
                        "${expected_shipped}")
  endif()
  run_checked(COMMAND ${CMAKE_COMMAND} -E env SIGATTN_DATA_DIR=/opt/sigattn-data
                      ${prefix}/bin/sigattn doctor OUTPUT doctor)
  if(NOT doctor MATCHES "shipped data: /opt/sigattn-data")
    message(FATAL_ERROR "SIGATTN_DATA_DIR is not reported by doctor:\n${doctor}")
  endif()
  return()
endif()

find_program(SIGATTN_PKG_CONFIG pkg-config REQUIRED)
add_test(NAME install_package
         COMMAND ${CMAKE_COMMAND} -DBUILD_DIR=${PROJECT_BINARY_DIR}
                 -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/install_package
                 -DSOURCE_DIR=${CMAKE_CURRENT_LIST_DIR} -DGENERATOR=${CMAKE_GENERATOR}
                 -DC_COMPILER=${CMAKE_C_COMPILER} -DCXX_COMPILER=${CMAKE_CXX_COMPILER}
                 -DPKG_CONFIG=${SIGATTN_PKG_CONFIG} -DVERSION=${PROJECT_VERSION}
                 -DVERSION_MAJOR=${PROJECT_VERSION_MAJOR} -DLIBDIR=${CMAKE_INSTALL_LIBDIR}
                 -DSTATIC=${SIGATTN_BUILD_STATIC}
                 "-DSANITIZE_FLAGS=$<$<BOOL:${SIGATTN_SANITIZE}>:-fsanitize=address,undefined>"
                 -P ${CMAKE_CURRENT_LIST_FILE})
set_tests_properties(install_package PROPERTIES LABELS cpu TIMEOUT 600)
