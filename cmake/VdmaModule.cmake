# Shared compile settings and the helper that declares one vdma module library.

# Warnings apply to the targets of this source tree only (a directory
# property, not a usage requirement): a project that adds vdma with
# add_subdirectory() keeps its own warning flags, and -Werror (VDMA_WERROR,
# off by default, on in every preset and so in CI) never reaches it, nor does
# it reach a project that uses the installed package (find_package, vdma.pc).
add_compile_options(-Wall -Wextra -Wshadow -Wnon-virtual-dtor
  -Wold-style-cast -Wcast-align -Woverloaded-virtual -Wimplicit-fallthrough
  # Every aggregate in vdma gives its members default initializers, and g++ 12
  # still warns when a designated initializer leaves such a member out.
  -Wno-missing-field-initializers)
if(VDMA_WERROR)
  add_compile_options(-Werror)
endif()

include(GNUInstallDirs)

add_library(vdma_options INTERFACE)
# Assertions that guard memory safety (VDMA_CHECK) stay on in every build type;
# VDMA_DCHECK is debug-only and guards nothing that a hostile peer controls.
target_compile_definitions(vdma_options INTERFACE $<$<CONFIG:Debug>:VDMA_DEBUG_CHECKS=1>)
target_compile_features(vdma_options INTERFACE cxx_std_20)
set_target_properties(vdma_options PROPERTIES EXPORT_NAME options)
add_library(vdma::options ALIAS vdma_options)
install(TARGETS vdma_options EXPORT vdmaTargets)

# The headers most module sources include, parsed once per build tree into
# one precompiled header (target vdma_pch) that every module reuses. It made
# about a quarter of a module source's compile time (fmt and spdlog alone
# 1.3 of 4.9 s in the dev preset). A source must still include what it uses:
# the fuzz preset builds the modules with VDMA_PCH off, so a missing include
# fails there.
set(VDMA_PCH_HEADERS
  <algorithm> <array> <atomic> <chrono> <cstddef> <cstdint> <cstring> <memory> <mutex> <optional>
  <span> <string> <string_view> <utility> <vector>
  <fmt/format.h> <spdlog/spdlog.h>)

function(vdma_module_pch)
  if(NOT VDMA_PCH)
    return()
  endif()
  add_library(vdma_pch OBJECT ${PROJECT_SOURCE_DIR}/cmake/pch.cc)
  # The flags and definitions of every module (vdma_options, fmt, spdlog), so
  # that the modules may reuse the header.
  target_link_libraries(vdma_pch PRIVATE vdma_options spdlog::spdlog fmt::fmt)
  target_precompile_headers(vdma_pch PRIVATE ${VDMA_PCH_HEADERS})
endfunction()

# vdma_module(NAME base DEPS ...): library vdma_<NAME> from src/<NAME>/*.cc,
# public headers under include/vdma/<NAME>/.
#
# Each module is also installed (cmake --install, cpack): the static library
# in ${CMAKE_INSTALL_LIBDIR}, its headers in include/vdma/<NAME>/, and the
# target in the export set vdmaTargets as vdma::<NAME> (the same name is an
# alias in the build tree). cmake/VdmaPackage.cmake turns the export set and
# the list of modules (global property VDMA_MODULES, in declaration order, so
# each after its dependencies) into vdmaConfig.cmake and vdma.pc: a module
# declared here needs no other edit to be installed and found. An external
# dependency that is new to vdma must be added to cmake/vdmaConfig.cmake.in
# and to vdma.pc's Requires there.
function(vdma_module)
  cmake_parse_arguments(M "" "NAME" "DEPS;EXTERNAL" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/${M_NAME}/*.cc)
  add_library(vdma_${M_NAME} STATIC ${srcs})
  add_library(vdma::${M_NAME} ALIAS vdma_${M_NAME})
  set_target_properties(vdma_${M_NAME} PROPERTIES EXPORT_NAME ${M_NAME})
  target_include_directories(vdma_${M_NAME}
    PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
    PRIVATE ${PROJECT_SOURCE_DIR}/src/${M_NAME})
  target_link_libraries(vdma_${M_NAME} PUBLIC vdma_options ${M_DEPS} ${M_EXTERNAL})
  if(TARGET vdma_pch)
    target_precompile_headers(vdma_${M_NAME} REUSE_FROM vdma_pch)
  endif()

  install(TARGETS vdma_${M_NAME} EXPORT vdmaTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
  if(IS_DIRECTORY ${PROJECT_SOURCE_DIR}/include/vdma/${M_NAME})
    install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/vdma/${M_NAME}
      DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/vdma COMPONENT dev)
  endif()
  set_property(GLOBAL APPEND PROPERTY VDMA_MODULES ${M_NAME})
endfunction()
