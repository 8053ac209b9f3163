# The layering check (label cpu). Dependencies point one way: cli -> tuner -> runtime -> cache ->
# generator. Included by tests/CMakeLists.txt, this file adds the tests; run with
# `cmake -DROOT=dir -P` it reads every source under ROOT's tuner/, runtime/, cache/ and
# generator/ and fails, naming each file and include, where one includes a layer above its own.
if(CMAKE_SCRIPT_MODE_FILE)
  # The layers each one must not include.
  set(above_tuner cli)
  set(above_runtime tuner cli)
  set(above_cache runtime tuner cli)
  set(above_generator cache runtime tuner cli)

  file(REAL_PATH "${ROOT}" ROOT)
  set(violations "")
  set(checked 0)
  foreach(layer tuner runtime cache generator)
    file(GLOB_RECURSE sources RELATIVE ${ROOT} ${ROOT}/${layer}/*.cpp ${ROOT}/${layer}/*.hpp
         ${ROOT}/${layer}/*.h)
    list(SORT sources)
    list(LENGTH sources count)
    math(EXPR checked "${checked} + ${count}")
    foreach(source ${sources})
      file(STRINGS ${ROOT}/${source} includes REGEX "^[ \t]*#[ \t]*include[ \t]*[\"<]")
      foreach(include ${includes})
        string(REGEX REPLACE "^[^\"<]*[\"<]([^\">]*)[\">].*$" "\\1" path "${include}")
        foreach(above ${above_${layer}})
          if(path MATCHES "^${above}/")
            string(APPEND violations "\n  ${source} includes \"${path}\": ${layer} is below ${above}")
          endif()
        endforeach()
      endforeach()
    endforeach()
  endforeach()
  if(checked EQUAL 0)
    message(FATAL_ERROR "no sources under ${ROOT}/{tuner,runtime,cache,generator}")
  endif()
  if(violations)
    message(FATAL_ERROR "wrong-way includes (cli -> tuner -> runtime -> cache -> generator):"
                        "${violations}")
  endif()
  return()
endif()

add_test(NAME layers COMMAND ${CMAKE_COMMAND} -DROOT=${PROJECT_SOURCE_DIR} -P
                             ${CMAKE_CURRENT_LIST_FILE})
# The check on a tree where each layer includes upwards once (and downwards legally, in allowed.*):
# it must report every wrong-way include and nothing else.
set(layers_fixture ${CMAKE_CURRENT_LIST_DIR}/data/layers)
add_test(NAME layers_check_fails_on_wrong_way_includes
         COMMAND ${CMAKE_COMMAND} -DROOT=${layers_fixture} -P ${CMAKE_CURRENT_LIST_FILE})
set(layers_expected
    [[tuner/up.cpp includes "cli/db_commands.hpp": tuner is below cli]]
    [[runtime/up.cpp includes "tuner/online_tuning.hpp": runtime is below tuner]]
    [[runtime/up.hpp includes "cli/tune_command.hpp": runtime is below cli]]
    [[cache/up.cpp includes "runtime/forward.hpp": cache is below runtime]]
    [[cache/up.cpp includes "tuner/tuner.hpp": cache is below tuner]]
    [[generator/up.hpp includes "cache/database.hpp": generator is below cache]])
list(TRANSFORM layers_expected REPLACE "[.]" "[.]")
list(JOIN layers_expected ".*" layers_expected)
set_tests_properties(layers layers_check_fails_on_wrong_way_includes PROPERTIES LABELS cpu)
set_tests_properties(layers_check_fails_on_wrong_way_includes PROPERTIES
                     PASS_REGULAR_EXPRESSION "${layers_expected}"
                     FAIL_REGULAR_EXPRESSION "allowed")
