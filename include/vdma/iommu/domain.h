// Domains: what a device's DMA is translated by (iommufd's hw_pagetable).
//
//   auto ioas = IoAddressSpace::create();
//   auto dom = *PagingDomain::create(*ioas);          // mirrors every map/unmap of ioas
//   dom->attach_device(DeviceId{3}, kMsiWindow);      // reserves the MSI window in ioas
//   Iova iova = *ioas->map(Gpa{0x10000}, 0x1000, Access::kRead);
//   Result<PageTranslation> t = dom->translate(iova, Access::kRead);   // gpa:0x10000
//
//   IdentityDomain bypass;                            // iova == gpa
//   bypass.attach_device(DeviceId{4}, kMsiWindow);
//
// Three kinds:
// - PagingDomain: an IoPageTable kept in sync with one IoAddressSpace. On
//   creation it reserves the IOVAs its 48-bit table cannot hold ([2^48,
//   2^64)) in the IOAS and replays the existing mappings into the table.
// - IdentityDomain: the bypass, iova == gpa within a window (default [0, 2^52)).
// - NestedDomain (nested.h): a guest-owned stage-1 table over a PagingDomain.
//
// Devices: attach_device() records the device's reserved regions (MSI
// window, IO holes) where they take effect. For a paging or nested domain
// that is the IOAS under the domain, so an attach whose regions overlap an
// existing mapping fails with IommuErrc::kConflict naming both; for the
// identity domain translate() refuses those IOVAs with kReserved.
// detach_device() drops them again.
//
// Lifetime: a PagingDomain must not outlive its IoAddressSpace, and nested
// domains built on it must be destroyed before it (VDMA_CHECK). Destroying a
// domain detaches its devices.
// Thread safety: none; the owner of the IOAS serialises.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/iommu/errors.h"
#include "vdma/iommu/io_address_space.h"
#include "vdma/iommu/io_page_table.h"

namespace vdma {

class NestedDomain;

class Domain {
 public:
  enum class Kind : uint8_t { kIdentity, kPaging, kNested };

  virtual ~Domain() = default;
  Domain(const Domain&) = delete;
  Domain& operator=(const Domain&) = delete;

  [[nodiscard]] virtual Kind kind() const noexcept = 0;

  // Translates one IOVA for `access` (kNone only probes). Not const: the
  // nested domain fills its TLB.
  // Errors: IommuErrc::kNotPresent, kPermissionFault; kReserved (identity
  // domain, an attached device's reserved region); kMalformedEntry (nested).
  [[nodiscard]] virtual Result<PageTranslation> translate(Iova iova, Access access) = 0;

  // Errors: IommuErrc::kInvalidArgument (device already attached, a range
  // with start > last), kConflict (a reserved region overlaps a mapping).
  // On error the device is not attached.
  [[nodiscard]] Result<void> attach_device(DeviceId dev, std::span<const IovaRange> reserved = {});
  // Errors: IommuErrc::kInvalidArgument (device not attached).
  [[nodiscard]] Result<void> detach_device(DeviceId dev);
  [[nodiscard]] bool has_device(DeviceId dev) const noexcept;
  [[nodiscard]] const std::vector<DeviceId>& devices() const noexcept { return devices_; }

 protected:
  Domain() = default;
  // Where a device's reserved regions take effect.
  [[nodiscard]] virtual Result<void> reserve_for_device(DeviceId dev, std::span<const IovaRange> reserved) = 0;
  virtual void release_device(DeviceId dev) = 0;
  // For derived destructors (a base destructor cannot reach the overrides).
  void detach_all_devices();

 private:
  std::vector<DeviceId> devices_;
};

class PagingDomain final : public Domain, private IoasMirror {
 public:
  // Errors: IommuErrc::kConflict (the IOAS has mappings at or above 2^48).
  [[nodiscard]] static Result<std::unique_ptr<PagingDomain>> create(IoAddressSpace& ioas);
  ~PagingDomain() override;

  [[nodiscard]] Kind kind() const noexcept override { return Kind::kPaging; }
  [[nodiscard]] Result<PageTranslation> translate(Iova iova, Access access) override {
    return table_.translate(iova, access);
  }

  [[nodiscard]] const IoPageTable& table() const noexcept { return table_; }
  [[nodiscard]] IoAddressSpace& ioas() const noexcept { return ioas_; }

  // Direct page-table access for the DMA API of this domain (Linux
  // iommu_map/iommu_unmap under dma-iommu, which keeps no IOAS for the
  // kernel's DMA domain). Precondition: the pages lie in IOVAs the caller
  // holds reserved in the IOAS (IoAddressSpace::add_reserved with
  // ReservationOwner::dma_api), which the IOAS therefore never maps, so the
  // IOAS and the table stay consistent. The IOAS does not see these pages
  // (find(), mappings(), copy()), and a domain created later over the same
  // IOAS does not get them. Errors: IoPageTable::map's / unmap's.
  [[nodiscard]] Result<void> map_pages(Iova iova, Gpa out, uint64_t len, Access perms) {
    return table_.map(iova, out, len, perms);
  }
  // Returns the bytes that were mapped; nested domains drop what they
  // derived from them.
  [[nodiscard]] Result<uint64_t> unmap_pages(Iova iova, uint64_t len);

 private:
  friend class NestedDomain;  // registers itself to hear about stage-2 unmaps

  explicit PagingDomain(IoAddressSpace& ioas) : ioas_(ioas) {}
  void mirror_map(const IoasMapping& m) override;
  void mirror_unmap(const IoasMapping& m) override;
  [[nodiscard]] Result<void> reserve_for_device(DeviceId dev, std::span<const IovaRange> reserved) override;
  void release_device(DeviceId dev) override;

  IoAddressSpace& ioas_;
  IoPageTable table_;
  bool attached_ = false;
  std::vector<NestedDomain*> nested_;  // stage-1 domains over this one
};

class IdentityDomain final : public Domain {
 public:
  // Precondition: window.start <= window.last < 2^64 - 1.
  explicit IdentityDomain(IovaRange window = {Iova(0), Iova(kSourceLimit - 1)});
  ~IdentityDomain() override;

  [[nodiscard]] Kind kind() const noexcept override { return Kind::kIdentity; }
  // gpa == iova, read/write, page_size 4 KiB, contiguous up to the window
  // end or the next reserved region.
  [[nodiscard]] Result<PageTranslation> translate(Iova iova, Access access) override;

 private:
  [[nodiscard]] Result<void> reserve_for_device(DeviceId dev, std::span<const IovaRange> reserved) override;
  void release_device(DeviceId dev) override;

  IovaRange window_;
  struct Reserved {
    DeviceId dev;
    IovaRange range;
  };
  std::vector<Reserved> reserved_;
};

}  // namespace vdma
