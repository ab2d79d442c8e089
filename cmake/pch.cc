// The source of target vdma_pch (cmake/VdmaModule.cmake): it only carries the
// precompiled header the modules reuse.
