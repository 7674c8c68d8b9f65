# Checks that ctest runs every test case of the Catch2 program (build.test_names_discovered).
#
# catch_discover_tests turns each name that `hgad_tests --list-test-names-only` prints into a ctest
# entry through a CMake list: a ';' in a name splits it in two, and an unmatched ']' joins every
# later name into one entry. Either way ctest then runs a filter that matches no test case, which
# Catch2 reports as "No test cases matched" and a pass, and the test cases behind it never run.
#   cmake -DTEST_PROGRAM=<hgad_tests> -DDISCOVERED_GLOB=<dir>/hgad_tests_tests-*.cmake \
#         -P check_test_names.cmake
execute_process(COMMAND ${TEST_PROGRAM} --list-test-names-only
                OUTPUT_VARIABLE names RESULT_VARIABLE listed)
# The names stay one string: read as a list they would be split the way this script looks for.
string(REGEX REPLACE "[^\n]" "" newlines "${names}")
string(LENGTH "${newlines}" count)
if(count EQUAL 0)
  message(FATAL_ERROR "${TEST_PROGRAM} --list-test-names-only printed no test names "
                      "(exit ${listed})")
endif()
string(REGEX MATCH "[^\n]*[];[][^\n]*" bad "${names}")
if(NOT bad STREQUAL "")
  message(FATAL_ERROR "a test name holds ';', '[' or ']', which ctest's discovery cannot keep "
                      "whole: \"${bad}\"")
endif()

file(GLOB discovered ${DISCOVERED_GLOB})
list(LENGTH discovered files)
if(NOT files EQUAL 1)
  message(FATAL_ERROR "expected one file of discovered tests matching ${DISCOVERED_GLOB}, "
                      "found ${files}")
endif()
file(READ ${discovered} script)
string(REGEX MATCHALL "(^|\n)add_test\\(" entries "${script}")
list(LENGTH entries registered)
if(NOT registered EQUAL count)
  message(FATAL_ERROR "${TEST_PROGRAM} has ${count} test cases and ctest ${registered} entries "
                      "for them")
endif()
message(STATUS "${count} test cases, each a ctest entry")
