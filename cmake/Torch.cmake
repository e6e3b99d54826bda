# LibTorch from the PyPI wheel, as a hand-made IMPORTED target.
# The wheel's own TorchConfig.cmake insists on a CUDA toolkit; ours does not, and CPU-only machines
# build the same way. libtorch_cuda is linked with --no-as-needed so CUDA works where a GPU exists.
if(NOT KDAE_PYTHON)
  message(FATAL_ERROR "Set KDAE_PYTHON to the venv python that has torch (scripts/setup.sh does).")
endif()
execute_process(
  COMMAND "${KDAE_PYTHON}" -c "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__)"
  OUTPUT_VARIABLE _torch_out RESULT_VARIABLE _torch_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "Cannot import torch with ${KDAE_PYTHON}; run scripts/setup.sh")
endif()
string(REPLACE "\n" ";" _torch_out "${_torch_out}")
list(GET _torch_out 0 TORCH_DIR)
list(GET _torch_out 1 TORCH_VERSION)
message(STATUS "LibTorch ${TORCH_VERSION} from ${TORCH_DIR}")

add_library(torch_wheel INTERFACE IMPORTED GLOBAL)
target_include_directories(torch_wheel SYSTEM INTERFACE
  "${TORCH_DIR}/include" "${TORCH_DIR}/include/torch/csrc/api/include")
set(_torch_libs "${TORCH_DIR}/lib/libtorch.so" "${TORCH_DIR}/lib/libtorch_cpu.so" "${TORCH_DIR}/lib/libc10.so")
set(_torch_cuda_libs)
foreach(_lib torch_cuda c10_cuda)
  if(EXISTS "${TORCH_DIR}/lib/lib${_lib}.so")
    list(APPEND _torch_cuda_libs "${TORCH_DIR}/lib/lib${_lib}.so")
  endif()
endforeach()
target_link_libraries(torch_wheel INTERFACE
  "-Wl,--no-as-needed" ${_torch_cuda_libs} ${_torch_libs} "-Wl,--as-needed")
target_compile_definitions(torch_wheel INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
set(CMAKE_BUILD_RPATH "${TORCH_DIR}/lib")
set(CMAKE_INSTALL_RPATH "${TORCH_DIR}/lib")
set(KDAE_HAS_CUDA_LIBS OFF)
if(_torch_cuda_libs)
  set(KDAE_HAS_CUDA_LIBS ON)
endif()
