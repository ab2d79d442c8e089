# Shared compile settings and the helper that declares one vdma module library.

# Warnings apply to the targets of this source tree only (a directory
# property, not a usage requirement): a project that adds vdma with
# add_subdirectory() keeps its own warning flags, and -Werror (VDMA_WERROR,
# off by default, on in every preset and so in CI) never reaches it.
add_compile_options(-Wall -Wextra -Wshadow -Wnon-virtual-dtor
  -Wold-style-cast -Wcast-align -Woverloaded-virtual -Wimplicit-fallthrough
  # Every aggregate in vdma gives its members default initializers, and g++ 12
  # still warns when a designated initializer leaves such a member out.
  -Wno-missing-field-initializers)
if(VDMA_WERROR)
  add_compile_options(-Werror)
endif()

add_library(vdma_options INTERFACE)
# Assertions that guard memory safety (VDMA_CHECK) stay on in every build type;
# VDMA_DCHECK is debug-only and guards nothing that a hostile peer controls.
target_compile_definitions(vdma_options INTERFACE $<$<CONFIG:Debug>:VDMA_DEBUG_CHECKS=1>)

# vdma_module(NAME base DEPS ...): library vdma_<NAME> from src/<NAME>/*.cc,
# public headers under include/vdma/<NAME>/.
function(vdma_module)
  cmake_parse_arguments(M "" "NAME" "DEPS;EXTERNAL" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/${M_NAME}/*.cc)
  add_library(vdma_${M_NAME} STATIC ${srcs})
  target_include_directories(vdma_${M_NAME}
    PUBLIC ${PROJECT_SOURCE_DIR}/include
    PRIVATE ${PROJECT_SOURCE_DIR}/src/${M_NAME})
  target_link_libraries(vdma_${M_NAME} PUBLIC vdma_options ${M_DEPS} ${M_EXTERNAL})
endfunction()
