// Placeholder translation unit until the IOMMU module lands its first source.
namespace vdma::iommu_detail {}
