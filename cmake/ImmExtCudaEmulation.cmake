# The emulated CUDA module (IMM_EXT_CUDA_EMULATION=ON; off by default, CI turns it on): csrc/bindings.cpp
# built as imm_ext.<name>, with the .cu sources compiled as C++ (through one-line wrappers that include
# them) against csrc/emulation/cuda_runtime.h (that directory shadows the toolkit's header), and linked
# with the block scheduler and the CPU kernels.
# -O1: the kernels are instantiated for every dtype and head size, and their speed does not matter here.
include_guard(GLOBAL)

set(IMM_EXT_CUDA_EMULATION "$ENV{IMM_EXT_CUDA_EMULATION}" CACHE STRING "Build the emulated CUDA module: ON or OFF")
if(IMM_EXT_CUDA_EMULATION STREQUAL "")
  set(IMM_EXT_CUDA_EMULATION OFF)
endif()
message(STATUS "imm_ext: emulated CUDA module ${IMM_EXT_CUDA_EMULATION}")

function(imm_ext_add_cuda_emulation name)
  if(NOT IMM_EXT_CUDA_EMULATION)
    return()
  endif()
  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
    message(FATAL_ERROR "IMM_EXT_CUDA_EMULATION needs x86-64 (its fibers switch context in x86-64 assembly)")
  endif()
  set(emulation_dir ${CMAKE_CURRENT_SOURCE_DIR}/csrc/emulation)
  set(wrappers "")
  foreach(source IN LISTS ARGN)
    get_filename_component(stem ${source} NAME_WE)
    set(wrapper ${CMAKE_CURRENT_BINARY_DIR}/emulated/${stem}.cpp)
    file(CONFIGURE OUTPUT ${wrapper} CONTENT "#include \"${CMAKE_CURRENT_SOURCE_DIR}/${source}\"\n")
    list(APPEND wrappers ${wrapper})
  endforeach()
  add_library(${name}_kernels OBJECT ${wrappers} ${emulation_dir}/block_scheduler.cpp ${emulation_dir}/self_test.cpp)
  target_compile_options(${name}_kernels PRIVATE -O1)
  target_include_directories(${name}_kernels BEFORE PRIVATE ${emulation_dir})
  target_compile_definitions(${name}_kernels PRIVATE IMM_EXT_CUDA_EMULATION)

  pybind11_add_module(${name} MODULE csrc/bindings.cpp $<TARGET_OBJECTS:${name}_kernels>)
  target_include_directories(${name} BEFORE PRIVATE ${emulation_dir})
  target_compile_definitions(${name} PRIVATE IMM_EXT_VERSION="${SKBUILD_PROJECT_VERSION}" IMM_EXT_MODULE_NAME=${name}
                                             IMM_EXT_WITH_CUDA IMM_EXT_CUDA_EMULATION IMM_EXT_CUDA_ARCHS="emulated"
                                             IMM_EXT_CUDA_VERSION="emulated")
  target_link_libraries(${name} PRIVATE imm_ext_cpu)
  install(TARGETS ${name} LIBRARY DESTINATION imm_ext)
endfunction()
