# pd_add_test(NAME SOURCES src... [LIBS lib...] [LABELS l...] [TIMEOUT s] [ENV K=V...])
#
# One Check test executable registered with CTest. Labels: `unit` (fast, run under the
# sanitizers), `model` (needs the default model), `gpu` (needs a GPU: the executable exits 77
# when it finds none, which CTest reports as skipped), `slow`.
function(pd_add_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS;ENV;ARGS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} PkgConfig::CHECK)
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/tests/common)
  add_test(NAME ${name} COMMAND ${name} ${T_ARGS})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
                       SKIP_RETURN_CODE 77
                       ENVIRONMENT "PREFIXD_MODEL=${PREFIXD_DEFAULT_MODEL};CK_DEFAULT_TIMEOUT=${T_TIMEOUT};${T_ENV}")
endfunction()
