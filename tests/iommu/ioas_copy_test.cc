// IoAddressSpace::copy (IOMMU_IOAS_COPY): whole mappings only, same sources
// and permissions, fixed or "don't care" destination, errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "result_matchers.h"
#include "vdma/iommu/domain.h"
#include "vdma/iommu/io_address_space.h"

namespace vdma {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using namespace vdma::testing;

constexpr uint64_t k4K = 4096;
constexpr uint64_t k2M = uint64_t{2} << 20;

class IoasCopy : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_THAT(src->map(Gpa{0x100000}, k4K, Access::kRead, Iova{0x10000}), IsOk());
    ASSERT_THAT(src->map(Gpa{0x300000}, 2 * k4K, Access::kReadWrite, Iova{0x11000}), IsOk());
    ASSERT_THAT(src->map(Gpa{0x500000}, k4K, Access::kWrite, Iova{0x14000}), IsOk());  // gap at 0x13000
  }

  std::unique_ptr<IoAddressSpace> src = IoAddressSpace::create();
  std::unique_ptr<IoAddressSpace> dst = IoAddressSpace::create();
};

TEST_F(IoasCopy, CopiesOneMappingToAFixedIova) {
  auto dom = std::move(PagingDomain::create(*dst)).value();
  EXPECT_THAT(dst->copy(*src, Iova{0x11000}, 2 * k4K, Iova{0x40000}), HasValue(Iova{0x40000}));
  EXPECT_THAT(dst->mappings(), ElementsAre(IoasMapping{Iova{0x40000}, 2 * k4K, Gpa{0x300000}, Access::kReadWrite}));
  EXPECT_THAT(dom->translate(Iova{0x41010}, Access::kWrite), HasValue(Field(&PageTranslation::gpa, Gpa{0x301010})));
  // The source is untouched.
  EXPECT_EQ(src->mapping_count(), 3u);
}

TEST_F(IoasCopy, CopiesSeveralContiguousMappingsKeepingEachOne) {
  // Aligned for 12 KiB (roundup: 16 KiB) of a 1 MiB-aligned first source.
  EXPECT_THAT(dst->copy(*src, Iova{0x10000}, 3 * k4K), HasValue(Iova{0x4000}));
  EXPECT_THAT(dst->mappings(), ElementsAre(IoasMapping{Iova{0x4000}, k4K, Gpa{0x100000}, Access::kRead},
                                           IoasMapping{Iova{0x5000}, 2 * k4K, Gpa{0x300000}, Access::kReadWrite}));
  // They stay separate mappings: unmapping one of them alone is allowed.
  EXPECT_THAT(dst->unmap(Iova{0x5000}, 2 * k4K), HasValue(2 * k4K));
}

TEST_F(IoasCopy, RefusesRangesThatAreNotWholeMappings) {
  EXPECT_THAT(dst->copy(*src, Iova{0x11000}, k4K), IsErrorWith(IommuErrc::kWouldSplit, HasSubstr("iova:0x11000 + 0x2000")));
  EXPECT_THAT(dst->copy(*src, Iova{0x12000}, k4K), IsError(IommuErrc::kWouldSplit));
  EXPECT_THAT(dst->copy(*src, Iova{0x11000}, 3 * k4K), IsErrorWith(IommuErrc::kNotMapped, HasSubstr("iova:0x13000")));
  EXPECT_THAT(dst->copy(*src, Iova{0xf000}, 2 * k4K), IsErrorWith(IommuErrc::kNotMapped, HasSubstr("iova:0xf000")));
  EXPECT_THAT(dst->copy(*src, Iova{0x20000}, k4K), IsError(IommuErrc::kNotMapped));
  EXPECT_THAT(dst->copy(*src, Iova{0x10000}, 0), IsError(IommuErrc::kInvalidArgument));
  EXPECT_THAT(dst->copy(*src, Iova{UINT64_MAX}, 2), IsError(BaseErrc::kOverflow));
  EXPECT_EQ(dst->mapping_count(), 0u);
}

TEST_F(IoasCopy, DestinationErrorsAreThoseOfMap) {
  ASSERT_THAT(dst->map(Gpa{0}, k4K, Access::kRead, Iova{0x50000}), IsOk());
  EXPECT_THAT(dst->copy(*src, Iova{0x10000}, k4K, Iova{0x50000}), IsError(IommuErrc::kAlreadyMapped));
  EXPECT_THAT(dst->copy(*src, Iova{0x10000}, k4K, Iova{0x60800}), IsError(IommuErrc::kMisaligned));
  const IovaRange msi{Iova{0xfee00000}, Iova{0xfeefffff}};
  ASSERT_THAT(dst->add_reserved(ReservationOwner::device(DeviceId{1}), {&msi, 1}), IsOk());
  EXPECT_THAT(dst->copy(*src, Iova{0x10000}, k4K, Iova{0xfee00000}), IsError(IommuErrc::kReserved));
  const IovaRange tiny{Iova{0x50000}, Iova{0x50fff}};
  ASSERT_THAT(dst->allow_iovas({&tiny, 1}), IsOk());
  EXPECT_THAT(dst->copy(*src, Iova{0x10000}, k4K), IsError(IommuErrc::kNoSpace));
  EXPECT_EQ(dst->mapping_count(), 1u);
}

TEST_F(IoasCopy, CopyWithinOneIoas) {
  EXPECT_THAT(src->copy(*src, Iova{0x14000}, k4K), HasValue(Iova{0x1000}));
  EXPECT_THAT(src->find(Iova{0x1000}), ::testing::Optional(IoasMapping{Iova{0x1000}, k4K, Gpa{0x500000}, Access::kWrite}));
}

TEST(IoasCopyAlignment, AutoDestinationFollowsTheFirstSource) {
  auto a = IoAddressSpace::create();
  auto b = IoAddressSpace::create();
  ASSERT_THAT(b->map(Gpa{0}, k4K, Access::kRead), IsOk());  // takes iova 0x1000 in b
  ASSERT_THAT(a->map(Gpa{8 * k2M}, k2M, Access::kRead, Iova{0x7000'0000}), IsOk());
  // 2 MiB of a 2 MiB-aligned source: a 2 MiB-aligned destination.
  EXPECT_THAT(b->copy(*a, Iova{0x7000'0000}, k2M), HasValue(Iova{k2M}));
  // Sub-page mappings keep their in-page offset.
  ASSERT_THAT(a->map(Gpa{0x9abc}, 0x20, Access::kRead, Iova{0x5abc}), IsOk());
  EXPECT_THAT(b->copy(*a, Iova{0x5abc}, 0x20), HasValue(Iova{0x2abc}));
  EXPECT_THAT(b->copy(*a, Iova{0x5abc}, 0x20, Iova{0x9000}), IsError(IommuErrc::kMisaligned));
}

}  // namespace
}  // namespace vdma
