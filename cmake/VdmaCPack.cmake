# cpack -G DEB: two packages from the install components.
#   vdma      (component runtime): vdma-blk, vdma-bench, their man pages, the
#             systemd units, the vhost-user JSON description, the example
#             configuration. Its dependencies come from dpkg-shlibdeps
#             (libc6, libstdc++6, liburing2, libfmt9, libspdlog1.10-fmt9, libsystemd0).
#   vdma-dev  (component dev): static libraries, headers, the CMake package
#             and vdma.pc; it depends on the -dev packages a consumer links.
# Install prefix /usr. cpack runs the install with DESTDIR, so the paths
# written at install time (cmake/VdmaPackage.cmake) are /usr ones.
set(CPACK_PACKAGE_NAME vdma)
set(CPACK_PACKAGE_VENDOR "vdma")
set(CPACK_PACKAGE_CONTACT "vdma maintainers <vdma@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "virtio stack with a platform DMA layer; vhost-user-blk back-end vdma-blk")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
# With CPACK_SET_DESTDIR, cpack installs with DESTDIR=<staging> and
# CMAKE_INSTALL_PREFIX=CPACK_INSTALL_PREFIX, so install-time paths are /usr
# ones (without it the prefix would be <staging>/usr).
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_SET_DESTDIR ON)
set(CPACK_GENERATOR DEB)
set(CPACK_STRIP_FILES ON)
set(CPACK_COMPONENTS_ALL runtime dev)

set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION misc)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME vdma)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON)
string(CONCAT CPACK_DEBIAN_RUNTIME_DESCRIPTION
  "vhost-user-blk back-end that works behind a vIOMMU, and its benchmark\n"
  "vdma-blk serves a disk image to QEMU's vhost-user-blk-pci device and offers\n"
  "VIRTIO_F_ACCESS_PLATFORM; vdma-bench drives any vhost-user-blk back-end in\n"
  "every DMA mode and verifies every byte. Includes systemd units for socket\n"
  "activation (vdma-blk@.socket, vdma-blk@.service).")
set(CPACK_DEBIAN_DEV_PACKAGE_NAME vdma-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
  "libfmt-dev, libspdlog-dev, nlohmann-json3-dev, liburing-dev, pkg-config")
string(CONCAT CPACK_DEBIAN_DEV_DESCRIPTION
  "vdma static libraries and headers (C++20)\n"
  "One static library per module (vdma::base ... vdma::frontend for\n"
  "find_package(vdma)), the public headers in /usr/include/vdma and vdma.pc.")
include(CPack)
