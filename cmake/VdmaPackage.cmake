# Installation of everything that is not a module library (those are
# installed by vdma_module()): the CMake package, vdma.pc, and the files
# whose contents name install paths.
#
# Install-time paths: the JSON description, the systemd units and vdma.pc
# name absolute paths (the binary, the configuration directory, the library
# directory). They are written when `cmake --install` runs, from the prefix
# it is given (`--prefix /usr`), not from CMAKE_INSTALL_PREFIX at configure
# time; cpack installs with DESTDIR and the packaging prefix (/usr), so the
# .deb gets the same.
include(CMakePackageConfigHelpers)

set(VDMA_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/vdma)

function(vdma_install_package)
  get_property(modules GLOBAL PROPERTY VDMA_MODULES)
  set(VDMA_MODULES ${modules})
  install(EXPORT vdmaTargets NAMESPACE vdma:: DESTINATION ${VDMA_CMAKE_DIR} COMPONENT dev)
  configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/vdmaConfig.cmake.in
    ${PROJECT_BINARY_DIR}/vdmaConfig.cmake INSTALL_DESTINATION ${VDMA_CMAKE_DIR})
  write_basic_package_version_file(${PROJECT_BINARY_DIR}/vdmaConfigVersion.cmake
    COMPATIBILITY SameMinorVersion)
  install(FILES ${PROJECT_BINARY_DIR}/vdmaConfig.cmake ${PROJECT_BINARY_DIR}/vdmaConfigVersion.cmake
    DESTINATION ${VDMA_CMAKE_DIR} COMPONENT dev)

  # vdma.pc: every module library, each before the ones it builds on
  # (modules are declared after their dependencies, so the reverse order).
  set(libs "")
  foreach(m ${modules})
    set(libs "-lvdma_${m} ${libs}")
  endforeach()
  set(VDMA_PC_LIBS "${libs}")

  # What the install-time script needs to know from configure time.
  configure_file(${PROJECT_SOURCE_DIR}/cmake/VdmaInstallPaths.cmake.in
    ${PROJECT_BINARY_DIR}/VdmaInstallPaths.cmake @ONLY)
  set(script ${PROJECT_BINARY_DIR}/VdmaInstallPaths.cmake)
  install(CODE "include(\"${script}\")
vdma_install_configured(${PROJECT_SOURCE_DIR}/cmake/vdma.pc.in \"\${VDMA_LIBDIR}/pkgconfig\")"
    COMPONENT dev)
endfunction()

# vdma_install_configured_file(TEMPLATE DESTINATION COMPONENT): installs
# TEMPLATE (@VAR@ placeholders; see cmake/VdmaInstallPaths.cmake.in for the
# install-time variables) under DESTINATION, which is relative to the install
# prefix, with the .in suffix dropped.
function(vdma_install_configured_file template destination component)
  set(script ${PROJECT_BINARY_DIR}/VdmaInstallPaths.cmake)
  install(CODE "include(\"${script}\")
vdma_install_configured(\"${template}\" \"\${CMAKE_INSTALL_PREFIX}/${destination}\")"
    COMPONENT ${component})
endfunction()
