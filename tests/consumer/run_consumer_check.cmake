# Installs hgad into a scratch prefix, then configures, builds and runs tests/consumer against it.
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
