# Compiles CPU kernel sources once per instruction set (baseline, and on x86-64 also AVX2 and
# AVX-512 builds), each into its own namespace imm::cpu::<isa>; csrc/cpu/dispatch.cpp picks one
# at run time with __builtin_cpu_supports. The flags ask for auto-vectorisation without fast-math,
# so NaN and inf keep their IEEE meaning.
include_guard(GLOBAL)

set(IMM_EXT_CPU_COMMON_FLAGS -O3 -fopenmp-simd -fno-math-errno -fno-trapping-math -Wno-psabi)

function(imm_ext_add_cpu_kernels target)
  set(isas baseline)
  set(flags_baseline "")
  set(vector_bytes_baseline 16)
  set(vector_bytes_avx2 32)
  set(vector_bytes_avx512 64)
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
    list(APPEND isas avx2 avx512)
    set(flags_avx2 -march=x86-64-v3)
    set(flags_avx512 -march=x86-64-v4 -mprefer-vector-width=512)
    target_compile_definitions(${target} PRIVATE IMM_CPU_HAS_AVX2 IMM_CPU_HAS_AVX512)
  endif()
  foreach(isa IN LISTS isas)
    set(lib ${target}_cpu_${isa})
    add_library(${lib} OBJECT ${ARGN})
    target_compile_definitions(${lib} PRIVATE IMM_CPU_ISA=${isa} IMM_CPU_VECTOR_BYTES=${vector_bytes_${isa}})
    target_compile_options(${lib} PRIVATE ${IMM_EXT_CPU_COMMON_FLAGS} ${flags_${isa}})
    target_link_libraries(${lib} PRIVATE OpenMP::OpenMP_CXX)
    target_sources(${target} PRIVATE $<TARGET_OBJECTS:${lib}>)
  endforeach()
endfunction()
