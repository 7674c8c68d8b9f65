# Installs hgad into a scratch prefix, then configures, builds and runs tests/consumer against it, and
# does the same for the example project the README shows.
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/hgad-build
                        -DHGAD_BUILD_TESTS=OFF -DHGAD_BUILD_EXAMPLES=OFF -DHGAD_ENABLE_CUDA=OFF
                        -DHGAD_USE_OPENMP=${HGAD_USE_OPENMP}
                        -DCMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring hgad for installation failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --install ${WORK_DIR}/hgad-build RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "installing hgad failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/consumer-build
                        -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCMAKE_BUILD_TYPE=Release
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the consumer with find_package(hgad) failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the consumer failed")
endif()
execute_process(COMMAND ${WORK_DIR}/consumer-build/hgad_consumer RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "the consumer program failed")
endif()

# The README's example project, exactly as it is shown: the fenced block after each
# "<!-- consumer: FILE -->" line is written to FILE and built against the installed prefix.
file(READ ${SOURCE_DIR}/README.md readme)
set(example_dir ${WORK_DIR}/readme-example)
file(MAKE_DIRECTORY ${example_dir})
foreach(name CMakeLists.txt inspect.cpp)
  string(FIND "${readme}" "<!-- consumer: ${name}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "README.md has no '<!-- consumer: ${name}' block")
  endif()
  string(SUBSTRING "${readme}" ${at} -1 rest)
  string(FIND "${rest}" "```" open)
  string(SUBSTRING "${rest}" ${open} -1 rest)
  string(FIND "${rest}" "\n" line_end)
  math(EXPR body_start "${line_end} + 1")
  string(SUBSTRING "${rest}" ${body_start} -1 rest)
  string(FIND "${rest}" "```" close)
  string(SUBSTRING "${rest}" 0 ${close} body)
  file(WRITE ${example_dir}/${name} "${body}")
endforeach()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${example_dir} -B ${example_dir}/build
                        -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCMAKE_BUILD_TYPE=Release
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the README's example project against the installed prefix failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${example_dir}/build RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the README's example (inspect.cpp) against the installed prefix failed")
endif()
execute_process(COMMAND ${example_dir}/build/inspect RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(NOT rc EQUAL 2)
  message(FATAL_ERROR "the README's example without arguments should print its usage and exit 2, got ${rc}")
endif()
