// Domains: a PagingDomain mirrors its IOAS and reserves its aperture;
// devices bring reserved regions; the identity domain is the bypass.
#include "vdma/iommu/domain.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "result_matchers.h"

namespace vdma {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using namespace vdma::testing;

constexpr uint64_t k4K = 4096;
constexpr IovaRange kMsi{Iova{0xfee00000}, Iova{0xfeefffff}};
constexpr uint64_t k48 = uint64_t{1} << 48;

TEST(PagingDomain, ReplaysExistingMappingsAndMirrorsNewOnes) {
  auto ioas = IoAddressSpace::create();
  ASSERT_THAT(ioas->map(Gpa{0x80000}, 2 * k4K, Access::kRead, Iova{0x10000}), IsOk());
  auto dom = std::move(PagingDomain::create(*ioas)).value();
  EXPECT_EQ(dom->kind(), Domain::Kind::kPaging);
  EXPECT_THAT(dom->translate(Iova{0x11004}, Access::kRead), HasValue(Field(&PageTranslation::gpa, Gpa{0x81004})));

  const Iova b = *ioas->map(Gpa{0x90000}, k4K, Access::kWrite);
  EXPECT_THAT(dom->translate(b, Access::kWrite), HasValue(Field(&PageTranslation::gpa, Gpa{0x90000})));
  EXPECT_THAT(dom->translate(b, Access::kRead), IsError(IommuErrc::kPermissionFault));
  ASSERT_THAT(ioas->unmap(Iova{0x10000}, 2 * k4K), IsOk());
  EXPECT_THAT(dom->translate(Iova{0x10000}, Access::kRead), IsError(IommuErrc::kNotPresent));
  ioas->unmap_all();
  EXPECT_THAT(dom->translate(b, Access::kWrite), IsError(IommuErrc::kNotPresent));
}

TEST(PagingDomain, ReservesWhatA48BitTableCannotHold) {
  auto ioas = IoAddressSpace::create();
  ASSERT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{k48}), IsOk());  // fine without a domain
  auto refused = PagingDomain::create(*ioas);
  EXPECT_THAT(refused, IsErrorWith(IommuErrc::kConflict, HasSubstr("domain 1 aperture reserves [iova:0x1000000000000")));
  EXPECT_THAT(refused, IsErrorWith(IommuErrc::kConflict, HasSubstr("mapping iova:0x1000000000000 + 0x1000")));
  ASSERT_THAT(ioas->unmap(Iova{k48}, k4K), IsOk());

  auto dom = std::move(PagingDomain::create(*ioas)).value();
  EXPECT_THAT(ioas->iova_ranges().ranges, ElementsAre(IovaRange{Iova{0}, Iova{k48 - 1}}));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{k48}), IsError(IommuErrc::kReserved));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{k48 - k4K}), IsOk());
  // Destroying the domain gives the range back.
  dom.reset();
  EXPECT_THAT(ioas->iova_ranges().ranges, ElementsAre(IovaRange{Iova{0}, Iova{UINT64_MAX}}));
}

TEST(PagingDomain, DeviceReservedRegionsNarrowTheIoas) {
  auto ioas = IoAddressSpace::create();
  auto dom = std::move(PagingDomain::create(*ioas)).value();
  ASSERT_THAT(dom->attach_device(DeviceId{3}, {&kMsi, 1}), IsOk());
  EXPECT_TRUE(dom->has_device(DeviceId{3}));
  EXPECT_THAT(ioas->iova_ranges().ranges,
              ElementsAre(IovaRange{Iova{0}, Iova{0xfedfffff}}, IovaRange{Iova{0xfef00000}, Iova{k48 - 1}}));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{0xfee01000}), IsError(IommuErrc::kReserved));
  EXPECT_THAT(dom->attach_device(DeviceId{3}), IsErrorWith(IommuErrc::kInvalidArgument, HasSubstr("device 3")));
  ASSERT_THAT(dom->detach_device(DeviceId{3}), IsOk());
  EXPECT_THAT(dom->detach_device(DeviceId{3}), IsError(IommuErrc::kInvalidArgument));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{0xfee01000}), IsOk());
}

TEST(PagingDomain, AttachConflictingWithAMappingFailsAndNamesBoth) {
  auto ioas = IoAddressSpace::create();
  auto dom = std::move(PagingDomain::create(*ioas)).value();
  ASSERT_THAT(ioas->map(Gpa{0x7000}, k4K, Access::kRead, Iova{0xfee01000}), IsOk());
  const IovaRange hole{Iova{0x8000'0000}, Iova{0x8fff'ffff}};
  const IovaRange regions[] = {hole, kMsi};
  EXPECT_THAT(dom->attach_device(DeviceId{3}, regions),
              IsErrorWith(IommuErrc::kConflict, AllOf(HasSubstr("device 3 reserves [iova:0xfee00000, iova:0xfeefffff]"),
                                                      HasSubstr("mapping iova:0xfee01000 + 0x1000 -> gpa:0x7000"))));
  EXPECT_FALSE(dom->has_device(DeviceId{3}));
  // Nothing of the failed attach stays reserved (the IO hole came first).
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{0x8000'0000}), IsOk());
}

TEST(PagingDomain, DestroyingTheDomainDetachesItsDevices) {
  auto ioas = IoAddressSpace::create();
  auto dom = std::move(PagingDomain::create(*ioas)).value();
  ASSERT_THAT(dom->attach_device(DeviceId{1}, {&kMsi, 1}), IsOk());
  ASSERT_THAT(dom->attach_device(DeviceId{2}), IsOk());
  EXPECT_THAT(dom->devices(), ElementsAre(DeviceId{1}, DeviceId{2}));
  dom.reset();
  EXPECT_THAT(ioas->iova_ranges().ranges, ElementsAre(IovaRange{Iova{0}, Iova{UINT64_MAX}}));
}

TEST(PagingDomain, TwoDomainsOnOneIoasBothMirror) {
  auto ioas = IoAddressSpace::create();
  auto a = std::move(PagingDomain::create(*ioas)).value();
  auto b = std::move(PagingDomain::create(*ioas)).value();
  const Iova iova = *ioas->map(Gpa{0x40000}, k4K, Access::kReadWrite);
  EXPECT_THAT(a->translate(iova, Access::kRead), HasValue(Field(&PageTranslation::gpa, Gpa{0x40000})));
  EXPECT_THAT(b->translate(iova, Access::kRead), HasValue(Field(&PageTranslation::gpa, Gpa{0x40000})));
  a.reset();
  // b still reserves its aperture and keeps mirroring.
  EXPECT_THAT(ioas->iova_ranges().ranges, ElementsAre(IovaRange{Iova{0}, Iova{k48 - 1}}));
  ASSERT_THAT(ioas->unmap(iova, k4K), IsOk());
  EXPECT_THAT(b->translate(iova, Access::kRead), IsError(IommuErrc::kNotPresent));
}

TEST(IdentityDomain, TranslatesIovaToTheSameGpa) {
  IdentityDomain bypass(IovaRange{Iova{0}, Iova{0xffff'ffff}});
  EXPECT_EQ(bypass.kind(), Domain::Kind::kIdentity);
  EXPECT_THAT(bypass.translate(Iova{0x1234}, Access::kReadWrite),
              HasValue(AllOf(Field(&PageTranslation::gpa, Gpa{0x1234}), Field(&PageTranslation::perms, Access::kReadWrite),
                             Field(&PageTranslation::contiguous, 0x1'0000'0000u - 0x1234))));
  EXPECT_THAT(bypass.translate(Iova{0x1'0000'0000}, Access::kRead),
              IsErrorWith(IommuErrc::kNotPresent, HasSubstr("identity window")));
}

TEST(IdentityDomain, DeviceReservedRegionsAreNotTranslated) {
  IdentityDomain bypass;
  ASSERT_THAT(bypass.attach_device(DeviceId{4}, {&kMsi, 1}), IsOk());
  EXPECT_THAT(bypass.translate(Iova{0xfee00040}, Access::kWrite),
              IsErrorWith(IommuErrc::kReserved, HasSubstr("device 4")));
  // Contiguity stops where the reserved region starts.
  EXPECT_THAT(bypass.translate(Iova{0xfed00000}, Access::kRead),
              HasValue(Field(&PageTranslation::contiguous, 0x100000u)));
  const IovaRange backwards{Iova{2}, Iova{1}};
  EXPECT_THAT(bypass.attach_device(DeviceId{5}, {&backwards, 1}), IsError(IommuErrc::kInvalidArgument));
  EXPECT_FALSE(bypass.has_device(DeviceId{5}));
  ASSERT_THAT(bypass.detach_device(DeviceId{4}), IsOk());
  EXPECT_THAT(bypass.translate(Iova{0xfee00040}, Access::kWrite), HasValue(Field(&PageTranslation::gpa, Gpa{0xfee00040})));
}

}  // namespace
}  // namespace vdma
