// Syntax validation against hostile messages: every fixed-size request with a
// wrong size and a wrong fd count, bad headers, unknown codes, and each field
// rule, with the exact error code and message.
#include "vdma/vhost_user/validate.h"

#include <sys/eventfd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "result_matchers.h"
#include "vdma/vhost_user/encode.h"

namespace vdma::vhost_user {
namespace {

using ::testing::HasSubstr;
using namespace vdma::testing;

// A message as a hostile peer might send it: any code, flags, bytes and fds.
Message raw(uint32_t request, std::span<const std::byte> payload, size_t nfds, uint32_t flags = kVersion) {
  Message m(request, flags);
  m.set_payload(payload);
  for (size_t i = 0; i < nfds; ++i) m.add_fd(UniqueFd(::eventfd(0, EFD_CLOEXEC)));
  return m;
}
Message raw(FrontendRequest r, std::span<const std::byte> payload, size_t nfds, uint32_t flags = kVersion) {
  return raw(static_cast<uint32_t>(r), payload, nfds, flags);
}
template <class T>
Message raw_struct(FrontendRequest r, const T& payload, size_t nfds, uint32_t flags = kVersion) {
  return raw(r, std::as_bytes(std::span<const T, 1>(&payload, 1)), nfds, flags);
}
template <class T>
Message raw_backend(BackendRequest r, const T& payload, size_t nfds) {
  return raw(static_cast<uint32_t>(r), std::as_bytes(std::span<const T, 1>(&payload, 1)), nfds);
}

struct FixedRule {
  FrontendRequest request;
  size_t size;
  size_t fds;
};

// Every front-end request with a fixed payload size, with the fd count that
// a zero-filled payload of that size needs.
const std::vector<FixedRule>& fixed_rules() {
  using R = FrontendRequest;
  static const std::vector<FixedRule> rules = {
      {R::kGetFeatures, 0, 0},       {R::kSetFeatures, 8, 0},          {R::kSetOwner, 0, 0},
      {R::kResetOwner, 0, 0},        {R::kSetLogBase, 16, 1},          {R::kSetLogFd, 0, 1},
      {R::kSetVringNum, 8, 0},       {R::kSetVringAddr, 40, 0},        {R::kSetVringBase, 8, 0},
      {R::kGetVringBase, 8, 0},      {R::kSetVringKick, 8, 1},         {R::kSetVringCall, 8, 1},
      {R::kSetVringErr, 8, 1},       {R::kGetProtocolFeatures, 0, 0},  {R::kSetProtocolFeatures, 8, 0},
      {R::kGetQueueNum, 0, 0},       {R::kSetVringEnable, 8, 0},       {R::kSendRarp, 8, 0},
      {R::kNetSetMtu, 8, 0},         {R::kSetBackendReqFd, 0, 1},      {R::kIotlbMsg, 32, 0},
      {R::kSetVringEndian, 8, 0},    {R::kCloseCryptoSession, 8, 0},   {R::kPostcopyAdvise, 0, 0},
      {R::kPostcopyListen, 0, 0},    {R::kPostcopyEnd, 0, 0},          {R::kGetInflightFd, 24, 0},
      {R::kSetInflightFd, 24, 1},    {R::kGpuSetSocket, 0, 1},         {R::kResetDevice, 0, 0},
      {R::kVringKick, 8, 0},         {R::kGetMaxMemSlots, 0, 0},       {R::kAddMemReg, 40, 1},
      {R::kRemMemReg, 40, 0},        {R::kSetStatus, 8, 0},            {R::kGetStatus, 0, 0},
      {R::kGetSharedObject, 16, 0},  {R::kSetDeviceStateFd, 8, 1},     {R::kCheckDeviceState, 0, 0},
  };
  return rules;
}

TEST(ValidateFrontend, EveryFixedSizeRequestRejectsAWrongSize) {
  // 39 fixed layouts + SET_MEM_TABLE, GET_CONFIG, SET_CONFIG (variable) and
  // CREATE_CRYPTO_SESSION (unsupported) = all 43.
  ASSERT_EQ(fixed_rules().size() + 4, kFrontendRequestLast);
  for (const FixedRule& r : fixed_rules()) {
    const std::string name(request_name(r.request));
    std::vector<std::byte> longer(r.size + 1);
    EXPECT_THAT(validate_frontend_request(raw(r.request, longer, r.fds)),
                IsErrorWith(VhostUserErrc::kBadSize,
                            fmt::format("{}: payload size {}, expected {}", name, r.size + 1, r.size)))
        << name;
    if (r.size > 0) {
      std::vector<std::byte> shorter(r.size - 1);
      EXPECT_THAT(validate_frontend_request(raw(r.request, shorter, r.fds)),
                  IsErrorWith(VhostUserErrc::kBadSize,
                              fmt::format("{}: payload size {}, expected {}", name, r.size - 1, r.size)))
          << name;
    }
  }
}

TEST(ValidateFrontend, EveryFixedSizeRequestRejectsAWrongFdCount) {
  for (const FixedRule& r : fixed_rules()) {
    const std::string name(request_name(r.request));
    const std::vector<std::byte> zeros(r.size);
    const bool vring_file = r.request == FrontendRequest::kSetVringKick ||
                            r.request == FrontendRequest::kSetVringCall || r.request == FrontendRequest::kSetVringErr;
    std::vector<size_t> wrong = {r.fds + 1};
    if (r.fds > 0) wrong.push_back(r.fds - 1);
    if (r.request == FrontendRequest::kRemMemReg) wrong = {2, 8};  // 0 or 1 fd is allowed
    for (size_t n : wrong) {
      std::string expected = fmt::format("{}: fd count {}, expected {}", name, n, r.fds);
      if (vring_file) expected += " (no-fd flag clear)";
      if (r.request == FrontendRequest::kRemMemReg) expected = fmt::format("{}: fd count {}, expected 0 or 1", name, n);
      EXPECT_THAT(validate_frontend_request(raw(r.request, zeros, n)),
                  IsErrorWith(VhostUserErrc::kBadFdCount, expected))
          << name << " with " << n << " fds";
    }
  }
}

TEST(ValidateFrontend, RejectsBadHeaders) {
  const Message v2 = raw(FrontendRequest::kGetFeatures, {}, 0, 0x2);
  EXPECT_THAT(validate_frontend_request(v2),
              IsErrorWith(VhostUserErrc::kBadHeader, "GET_FEATURES: version 2 in flags 0x2, expected 1"));
  const Message v0 = raw(FrontendRequest::kSetOwner, {}, 0, 0x0);
  EXPECT_THAT(validate_frontend_request(v0),
              IsErrorWith(VhostUserErrc::kBadHeader, "SET_OWNER: version 0 in flags 0x0, expected 1"));
  const Message reserved = raw(FrontendRequest::kGetFeatures, {}, 0, 0x11);
  EXPECT_THAT(validate_frontend_request(reserved),
              IsErrorWith(VhostUserErrc::kBadHeader, "GET_FEATURES: reserved flag bits 0x10 set in flags 0x11"));
  const Message high = raw(FrontendRequest::kGetFeatures, {}, 0, 0x80000001);
  EXPECT_THAT(validate_frontend_request(high),
              IsErrorWith(VhostUserErrc::kBadHeader,
                          "GET_FEATURES: reserved flag bits 0x80000000 set in flags 0x80000001"));
  const Message reply = raw(FrontendRequest::kGetFeatures, {}, 0, kVersion | kFlagReply);
  EXPECT_THAT(validate_frontend_request(reply),
              IsErrorWith(VhostUserErrc::kBadHeader, "GET_FEATURES: REPLY flag set on a request"));
  const Message unknown_v3 = raw(99, {}, 0, 0x3);
  EXPECT_THAT(validate_frontend_request(unknown_v3),
              IsErrorWith(VhostUserErrc::kBadHeader, "request 99: version 3 in flags 0x3, expected 1"));
}

TEST(ValidateFrontend, RejectsUnknownAndUnsupportedRequests) {
  EXPECT_THAT(validate_frontend_request(raw(99, {}, 0)),
              IsErrorWith(VhostUserErrc::kUnknownRequest, "unknown front-end request 99"));
  EXPECT_THAT(validate_frontend_request(raw(0, {}, 0)),
              IsErrorWith(VhostUserErrc::kUnknownRequest, "unknown front-end request 0"));
  EXPECT_THAT(validate_frontend_request(raw(44, {}, 0)),
              IsErrorWith(VhostUserErrc::kUnknownRequest, "unknown front-end request 44"));
  std::vector<std::byte> session(100);
  EXPECT_THAT(validate_frontend_request(raw(FrontendRequest::kCreateCryptoSession, session, 0)),
              IsErrorWith(VhostUserErrc::kUnsupportedRequest,
                          "CREATE_CRYPTO_SESSION: payload layout not implemented by vdma"));
}

WireMemoryRegion region(uint64_t gpa, uint64_t size, uint64_t uaddr, uint64_t off) {
  return {gpa, size, uaddr, off};
}

Message mem_table_message(uint32_t num_regions, std::vector<WireMemoryRegion> regions, size_t nfds) {
  std::vector<std::byte> p(kMemoryTableHeaderSize + regions.size() * sizeof(WireMemoryRegion));
  const uint32_t header[2] = {num_regions, 0};
  std::memcpy(p.data(), header, sizeof header);
  if (!regions.empty()) std::memcpy(p.data() + kMemoryTableHeaderSize, regions.data(), regions.size() * 32);
  return raw(FrontendRequest::kSetMemTable, p, nfds);
}

TEST(ValidateFrontend, MemTableAcceptsOneToEightRegionsWithOneFdEach) {
  std::vector<WireMemoryRegion> regs;
  for (uint64_t i = 0; i < 8; ++i) regs.push_back(region(i << 30, 1 << 30, 0x7f0000000000 + (i << 30), 0));
  auto v = validate_frontend_request(mem_table_message(8, regs, 8));
  ASSERT_THAT(v, IsOk());
  const MemoryTable& t = v->as<MemoryTable>();
  ASSERT_EQ(t.list().size(), 8u);
  EXPECT_EQ(t.list()[7].guest_addr, DmaAddr{7ull << 30});
  EXPECT_EQ(t.list()[7].user_addr, FrontVa{0x7f0000000000 + (7ull << 30)});
  EXPECT_EQ(t.list()[7].size, 1ull << 30);

  auto one = validate_frontend_request(mem_table_message(1, {region(0, 0x1000, 0x1000, 0x2000)}, 1));
  ASSERT_THAT(one, IsOk());
  EXPECT_EQ(one->as<MemoryTable>().list()[0].mmap_offset, 0x2000u);
}

TEST(ValidateFrontend, MemTableRejectsRegionCountsOutsideOneToEight) {
  EXPECT_THAT(validate_frontend_request(mem_table_message(0, {}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_MEM_TABLE: num_regions 0, expected 1..8"));
  std::vector<WireMemoryRegion> nine(9, region(0, 0x1000, 0, 0));
  EXPECT_THAT(validate_frontend_request(mem_table_message(9, nine, 8)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_MEM_TABLE: num_regions 9, expected 1..8"));
  EXPECT_THAT(validate_frontend_request(mem_table_message(0xffffffff, {}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_MEM_TABLE: num_regions 4294967295, expected 1..8"));
}

TEST(ValidateFrontend, MemTableSizeMustMatchRegionCount) {
  EXPECT_THAT(validate_frontend_request(raw(FrontendRequest::kSetMemTable, std::vector<std::byte>(4), 0)),
              IsErrorWith(VhostUserErrc::kBadSize, "SET_MEM_TABLE: payload size 4, expected at least 8"));
  // num_regions says 3, two regions follow.
  std::vector<WireMemoryRegion> two(2, region(0, 0x1000, 0, 0));
  EXPECT_THAT(validate_frontend_request(mem_table_message(3, two, 3)),
              IsErrorWith(VhostUserErrc::kBadSize, "SET_MEM_TABLE: payload size 72 for 3 regions, expected 104"));
  // The full 8-slot VhostUserMemory with num_regions 1 is not what QEMU sends.
  std::vector<WireMemoryRegion> eight(8, region(0, 0x1000, 0, 0));
  EXPECT_THAT(validate_frontend_request(mem_table_message(1, eight, 1)),
              IsErrorWith(VhostUserErrc::kBadSize, "SET_MEM_TABLE: payload size 264 for 1 regions, expected 40"));
}

TEST(ValidateFrontend, MemTableNeedsOneFdPerRegion) {
  std::vector<WireMemoryRegion> three = {region(0, 0x1000, 0x10000, 0), region(0x1000, 0x1000, 0x20000, 0),
                                         region(0x2000, 0x1000, 0x30000, 0)};
  EXPECT_THAT(validate_frontend_request(mem_table_message(3, three, 2)),
              IsErrorWith(VhostUserErrc::kBadFdCount, "SET_MEM_TABLE: 3 regions but 2 fds"));
  EXPECT_THAT(validate_frontend_request(mem_table_message(3, three, 4)),
              IsErrorWith(VhostUserErrc::kBadFdCount, "SET_MEM_TABLE: 3 regions but 4 fds"));
}

TEST(ValidateFrontend, MemTableRejectsEmptyAndWrappingRegions) {
  EXPECT_THAT(validate_frontend_request(
                  mem_table_message(2, {region(0, 0x1000, 0x1000, 0), region(0x1000, 0, 0x2000, 0)}, 2)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_MEM_TABLE: region 1 has size 0"));
  EXPECT_THAT(
      validate_frontend_request(mem_table_message(1, {region(0xfffffffffffff000, 0x2000, 0x1000, 0)}, 1)),
      IsErrorWith(VhostUserErrc::kBadField,
                  "SET_MEM_TABLE: region 0 guest address dma:0xfffffffffffff000 + size 0x2000 wraps past 2^64"));
  EXPECT_THAT(validate_frontend_request(mem_table_message(1, {region(0, 0x2000, 0xfffffffffffff000, 0)}, 1)),
              IsErrorWith(VhostUserErrc::kBadField,
                          "SET_MEM_TABLE: region 0 user address fva:0xfffffffffffff000 + size 0x2000 wraps past 2^64"));
  EXPECT_THAT(validate_frontend_request(mem_table_message(1, {region(0, 0x2000, 0x1000, ~0ull)}, 1)),
              IsErrorWith(VhostUserErrc::kBadField,
                          "SET_MEM_TABLE: region 0 mmap offset 0xffffffffffffffff + size 0x2000 wraps past 2^64"));
  // Ending exactly at 2^64 does not wrap.
  EXPECT_THAT(validate_frontend_request(mem_table_message(1, {region(0xffffffffffffe000, 0x2000, 0x1000, 0)}, 1)),
              IsOk());
}

TEST(ValidateFrontend, SingleRegionMessages) {
  WireSingleMemoryRegion w;
  w.region = region(0x100000, 0x200000, 0x7f0000000000, 0x1000);
  auto add = validate_frontend_request(raw_struct(FrontendRequest::kAddMemReg, w, 1));
  ASSERT_THAT(add, IsOk());
  EXPECT_EQ(add->as<MemoryRegion>(),
            (MemoryRegion{DmaAddr{0x100000}, 0x200000, FrontVa{0x7f0000000000}, 0x1000}));
  // REM_MEM_REG: no fd, or one for old front-ends (vhost-user.rst), not two.
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kRemMemReg, w, 0)), IsOk());
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kRemMemReg, w, 1)), IsOk());
  w.region.memory_size = 0;
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kAddMemReg, w, 1)),
              IsErrorWith(VhostUserErrc::kBadField, "ADD_MEM_REG: region has size 0"));
  w.region = region(0, 0x2000, ~0ull - 0xfff, 0);
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kRemMemReg, w, 0)),
              IsErrorWith(VhostUserErrc::kBadField,
                          "REM_MEM_REG: region user address fva:0xfffffffffffff000 + size 0x2000 wraps past 2^64"));
}

TEST(ValidateFrontend, VringIndexAndNumRules) {
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringNum, WireVringState{256, 128}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_VRING_NUM: vring index 256, expected < 256"));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringNum, WireVringState{0, 0}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_VRING_NUM: queue size 0, expected 1..32768"));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringNum, WireVringState{0, 32769}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_VRING_NUM: queue size 32769, expected 1..32768"));
  auto num = validate_frontend_request(raw_struct(FrontendRequest::kSetVringNum, WireVringState{255, 32768}, 0));
  ASSERT_THAT(num, IsOk());
  EXPECT_EQ(num->as<VringState>(), (VringState{255, 32768}));

  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringEnable, WireVringState{0, 2}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_VRING_ENABLE: num 2, expected 0 or 1"));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringEndian, WireVringState{0, 7}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_VRING_ENDIAN: num 7, expected 0 or 1"));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kGetVringBase, WireVringState{1, 5}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "GET_VRING_BASE: num 5 is reserved and must be 0"));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kVringKick, WireVringState{1, 1}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "VRING_KICK: num 1 is reserved and must be 0"));
  EXPECT_THAT(
      validate_frontend_request(raw_struct(FrontendRequest::kSetVringBase, WireVringState{0xffffffff, 0}, 0)),
      IsErrorWith(VhostUserErrc::kBadField, "SET_VRING_BASE: vring index 4294967295, expected < 256"));
  // SET_VRING_BASE's num is the split or packed index word: any value.
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringBase, WireVringState{0, 0xffffffff}, 0)),
              IsOk());
}

TEST(ValidateFrontend, VringAddrFlags) {
  WireVringAddr w{3, 0x2, 0x1000, 0x2000, 0x3000, 0x4000};
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringAddr, w, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_VRING_ADDR: flags 0x2, only bit 0 (log) is defined"));
  w.flags = 1;
  auto v = validate_frontend_request(raw_struct(FrontendRequest::kSetVringAddr, w, 0));
  ASSERT_THAT(v, IsOk());
  const VringAddress& a = v->as<VringAddress>();
  EXPECT_TRUE(a.log_used);
  EXPECT_EQ(a.desc.as_user(), FrontVa{0x1000});
  EXPECT_EQ(a.used.as_iova(), Iova{0x2000});
  EXPECT_EQ(a.avail.as_user(), FrontVa{0x3000});
  EXPECT_EQ(a.log_guest_addr, Gpa{0x4000});
  w.index = 300;
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringAddr, w, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_VRING_ADDR: vring index 300, expected < 256"));
}

TEST(ValidateFrontend, VringFileFdFollowsTheNoFdBit) {
  auto kick = validate_frontend_request(raw_struct(FrontendRequest::kSetVringKick, WireU64{5}, 1));
  ASSERT_THAT(kick, IsOk());
  EXPECT_EQ(kick->as<VringFile>(), (VringFile{5, true}));
  auto poll = validate_frontend_request(raw_struct(FrontendRequest::kSetVringCall, WireU64{0x105}, 0));
  ASSERT_THAT(poll, IsOk());
  EXPECT_EQ(poll->as<VringFile>(), (VringFile{5, false}));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringErr, WireU64{0x100}, 1)),
              IsErrorWith(VhostUserErrc::kBadFdCount, "SET_VRING_ERR: fd count 1, expected 0 (no-fd flag set)"));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringKick, WireU64{0}, 0)),
              IsErrorWith(VhostUserErrc::kBadFdCount, "SET_VRING_KICK: fd count 0, expected 1 (no-fd flag clear)"));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringKick, WireU64{0x201}, 1)),
              IsErrorWith(VhostUserErrc::kBadField,
                          "SET_VRING_KICK: reserved bits 0x200 set in 0x201 (only bits 0-8 are defined)"));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetVringKick, WireU64{1ull << 63}, 1)),
              IsErrorWith(VhostUserErrc::kBadField, HasSubstr("reserved bits 0x8000000000000000")));
}

TEST(ValidateFrontend, ConfigSpaceRules) {
  auto config = [](uint32_t offset, uint32_t size, uint32_t flags, size_t data_len, FrontendRequest r) {
    std::vector<std::byte> p(sizeof(WireConfigHeader) + data_len, std::byte{0x33});
    const WireConfigHeader h{offset, size, flags};
    std::memcpy(p.data(), &h, sizeof h);
    return raw(r, p, 0);
  };
  auto ok_get = validate_frontend_request(config(0, 60, 0, 60, FrontendRequest::kGetConfig));
  ASSERT_THAT(ok_get, IsOk());
  EXPECT_EQ(ok_get->as<ConfigSpace>().size, 60u);
  EXPECT_EQ(ok_get->as<ConfigSpace>().bytes()[59], std::byte{0x33});
  EXPECT_THAT(validate_frontend_request(config(0, 256, 1, 256, FrontendRequest::kSetConfig)), IsOk());

  EXPECT_THAT(validate_frontend_request(config(0, 257, 0, 257, FrontendRequest::kSetConfig)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_CONFIG: config size 257, expected 1..256"));
  EXPECT_THAT(validate_frontend_request(config(0, 0, 0, 0, FrontendRequest::kGetConfig)),
              IsErrorWith(VhostUserErrc::kBadField, "GET_CONFIG: config size 0, expected 1..256"));
  EXPECT_THAT(validate_frontend_request(config(0, 4, 0, 8, FrontendRequest::kGetConfig)),
              IsErrorWith(VhostUserErrc::kBadSize, "GET_CONFIG: payload size 20 for config size 4, expected 16"));
  EXPECT_THAT(
      validate_frontend_request(config(200, 100, 0, 100, FrontendRequest::kGetConfig)),
      IsErrorWith(VhostUserErrc::kBadField, "GET_CONFIG: offset 200 + size 100 exceeds the 256-byte config space"));
  EXPECT_THAT(validate_frontend_request(config(0xffffffff, 1, 0, 1, FrontendRequest::kGetConfig)),
              IsErrorWith(VhostUserErrc::kBadField,
                          "GET_CONFIG: offset 4294967295 + size 1 exceeds the 256-byte config space"));
  EXPECT_THAT(
      validate_frontend_request(config(0, 4, 2, 4, FrontendRequest::kSetConfig)),
      IsErrorWith(VhostUserErrc::kBadField, "SET_CONFIG: flags 2, expected 0 (writable) or 1 (live migration)"));
  EXPECT_THAT(validate_frontend_request(raw(FrontendRequest::kGetConfig, std::vector<std::byte>(11), 0)),
              IsErrorWith(VhostUserErrc::kBadSize, "GET_CONFIG: payload size 11, expected at least 12"));
  Message with_fd = config(0, 4, 0, 4, FrontendRequest::kGetConfig);
  with_fd.add_fd(UniqueFd(::eventfd(0, EFD_CLOEXEC)));
  EXPECT_THAT(validate_frontend_request(with_fd),
              IsErrorWith(VhostUserErrc::kBadFdCount, "GET_CONFIG: fd count 1, expected 0"));
}

WireIotlbMsg iotlb(uint64_t iova, uint64_t size, uint64_t uaddr, uint8_t perm, uint8_t type) {
  WireIotlbMsg w;
  w.iova = iova;
  w.size = size;
  w.uaddr = uaddr;
  w.perm = perm;
  w.type = type;
  return w;
}

TEST(ValidateFrontend, IotlbMessages) {
  auto upd = validate_frontend_request(raw_struct(FrontendRequest::kIotlbMsg, iotlb(0x1000, 0x2000, 0x7f00, 3, 2), 0));
  ASSERT_THAT(upd, IsOk());
  EXPECT_EQ(upd->as<IotlbMessage>(),
            (IotlbMessage{IotlbType::kUpdate, IotlbPerm::kReadWrite, Iova{0x1000}, 0x2000, FrontVa{0x7f00}}));
  EXPECT_EQ(upd->as<IotlbMessage>().last(), Iova{0x2fff});

  // Invalid types for the front-end's direction, and undefined ones.
  for (uint8_t type : {0, 1, 4, 5, 6, 7, 255}) {
    EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kIotlbMsg, iotlb(0, 1, 0, 1, type), 0)),
                IsErrorWith(VhostUserErrc::kBadField,
                            fmt::format("IOTLB_MSG: type {}, expected UPDATE (2) or INVALIDATE (3)", type)));
  }
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kIotlbMsg, iotlb(0, 1, 0, 4, 2), 0)),
              IsErrorWith(VhostUserErrc::kBadField, "IOTLB_MSG: UPDATE perm 4, expected 0..3"));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kIotlbMsg, iotlb(0x1000, 0, 0, 1, 2), 0)),
              IsErrorWith(VhostUserErrc::kBadField, "IOTLB_MSG: UPDATE of size 0 at iova:0x1000"));
  EXPECT_THAT(
      validate_frontend_request(raw_struct(FrontendRequest::kIotlbMsg, iotlb(~0ull - 0xfff, 0x2000, 0, 1, 2), 0)),
      IsErrorWith(VhostUserErrc::kBadField,
                  "IOTLB_MSG: UPDATE iova:0xfffffffffffff000 + size 0x2000 wraps past 2^64"));
  EXPECT_THAT(
      validate_frontend_request(raw_struct(FrontendRequest::kIotlbMsg, iotlb(0, 0x2000, ~0ull - 0xfff, 1, 2), 0)),
      IsErrorWith(VhostUserErrc::kBadField,
                  "IOTLB_MSG: UPDATE fva:0xfffffffffffff000 + size 0x2000 wraps past 2^64"));
}

TEST(ValidateFrontend, IotlbInvalidateOfTheWholeSpace) {
  // QEMU's whole-device-TLB flush: iova 0, size (mask ~0) + 1 == 0.
  auto all = validate_frontend_request(raw_struct(FrontendRequest::kIotlbMsg, iotlb(0, 0, 0xdead, 3, 3), 0));
  ASSERT_THAT(all, IsOk());
  const IotlbMessage& m = all->as<IotlbMessage>();
  EXPECT_EQ(m.type, IotlbType::kInvalidate);
  EXPECT_EQ(m.iova, Iova{0});
  EXPECT_EQ(m.last(), Iova{~0ull});
  EXPECT_EQ(m.uaddr, FrontVa{0});  // unused fields are zeroed in the view
  EXPECT_EQ(m.perm, IotlbPerm::kNone);
  EXPECT_THAT(
      validate_frontend_request(raw_struct(FrontendRequest::kIotlbMsg, iotlb(0x1000, 0, 0, 0, 3), 0)),
      IsErrorWith(VhostUserErrc::kBadField,
                  "IOTLB_MSG: INVALIDATE of size 0 at iova:0x1000 (size 0 means all of 2^64 and needs iova 0)"));
  // Up to the top of the space, exactly.
  auto top = validate_frontend_request(
      raw_struct(FrontendRequest::kIotlbMsg, iotlb(0xffff000000000000, 0x1000000000000, 0, 0, 3), 0));
  ASSERT_THAT(top, IsOk());
  EXPECT_EQ(top->as<IotlbMessage>().last(), Iova{~0ull});
  EXPECT_THAT(validate_frontend_request(
                  raw_struct(FrontendRequest::kIotlbMsg, iotlb(0xffff000000000000, 1ull << 49, 0, 0, 3), 0)),
              IsErrorWith(VhostUserErrc::kBadField,
                          "IOTLB_MSG: INVALIDATE iova:0xffff000000000000 + size 0x2000000000000 wraps past 2^64"));
}

TEST(ValidateFrontend, InflightLogStatusAndDeviceState) {
  WireInflight in;
  in.num_queues = 0;
  in.queue_size = 128;
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kGetInflightFd, in, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "GET_INFLIGHT_FD: num_queues 0, expected 1..256"));
  in.num_queues = 2;
  in.queue_size = 0;
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kGetInflightFd, in, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "GET_INFLIGHT_FD: queue_size 0, expected 1..32768"));
  in.queue_size = 128;
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kGetInflightFd, in, 0)), IsOk());
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetInflightFd, in, 1)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_INFLIGHT_FD: mmap size 0"));
  in.mmap_size = 0x1000;
  in.mmap_offset = ~0ull;
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetInflightFd, in, 1)),
              IsErrorWith(VhostUserErrc::kBadField,
                          "SET_INFLIGHT_FD: mmap offset 0xffffffffffffffff + size 0x1000 wraps past 2^64"));

  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetLogBase, WireLog{0, 0}, 1)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_LOG_BASE: mmap size 0"));
  auto log = validate_frontend_request(raw_struct(FrontendRequest::kSetLogBase, WireLog{0x8000, 0x1000}, 1));
  ASSERT_THAT(log, IsOk());
  EXPECT_EQ(log->as<LogArea>(), (LogArea{0x8000, 0x1000}));

  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetStatus, WireU64{0x100}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_STATUS: status 0x100 does not fit the 8-bit device status"));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetStatus, WireU64{0xff}, 0)), IsOk());

  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetDeviceStateFd, WireDeviceStateParams{2, 0}, 1)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_DEVICE_STATE_FD: direction 2, expected 0 (save) or 1 (load)"));
  EXPECT_THAT(validate_frontend_request(raw_struct(FrontendRequest::kSetDeviceStateFd, WireDeviceStateParams{1, 1}, 1)),
              IsErrorWith(VhostUserErrc::kBadField, "SET_DEVICE_STATE_FD: phase 1, expected 0 (stopped)"));
}

TEST(ValidateFrontend, NeedReplyIsReported) {
  auto v = validate_frontend_request(raw(FrontendRequest::kSetOwner, {}, 0, kVersion | kFlagNeedReply));
  ASSERT_THAT(v, IsOk());
  EXPECT_TRUE(v->need_reply);
  EXPECT_EQ(v->request, FrontendRequest::kSetOwner);
  EXPECT_DEATH((void)v->as<MemoryTable>(), "wrong payload type");
}

// --- Back-end requests ---------------------------------------------------------

TEST(ValidateBackend, EveryRequestRejectsAWrongSizeAndFdCount) {
  struct Rule {
    BackendRequest request;
    size_t size;
    size_t fds;
  };
  const std::vector<Rule> rules = {
      {BackendRequest::kIotlbMsg, 32, 0},          {BackendRequest::kConfigChangeMsg, 0, 0},
      {BackendRequest::kVringHostNotifierMsg, 24, 1}, {BackendRequest::kVringCall, 8, 0},
      {BackendRequest::kVringErr, 8, 0},           {BackendRequest::kSharedObjectAdd, 16, 0},
      {BackendRequest::kSharedObjectRemove, 16, 0}, {BackendRequest::kSharedObjectLookup, 16, 0},
  };
  ASSERT_EQ(rules.size(), kBackendRequestLast);
  for (const Rule& r : rules) {
    const std::string name(request_name(r.request));
    const auto code = static_cast<uint32_t>(r.request);
    EXPECT_THAT(validate_backend_request(raw(code, std::vector<std::byte>(r.size + 1), r.fds)),
                IsErrorWith(VhostUserErrc::kBadSize,
                            fmt::format("{}: payload size {}, expected {}", name, r.size + 1, r.size)));
    std::string fd_msg = fmt::format("{}: fd count {}, expected {}", name, r.fds + 1, r.fds);
    if (r.request == BackendRequest::kVringHostNotifierMsg) fd_msg += " (no-fd flag clear)";
    EXPECT_THAT(validate_backend_request(raw(code, std::vector<std::byte>(r.size), r.fds + 1)),
                IsErrorWith(VhostUserErrc::kBadFdCount, fd_msg));
  }
  EXPECT_THAT(validate_backend_request(raw(9, {}, 0)),
              IsErrorWith(VhostUserErrc::kUnknownRequest, "unknown back-end request 9"));
}

TEST(ValidateBackend, IotlbMissAndAccessFail) {
  auto miss = validate_backend_request(raw_backend(BackendRequest::kIotlbMsg, iotlb(0x5000, 77, 88, 1, 1), 0));
  ASSERT_THAT(miss, IsOk());
  EXPECT_EQ(miss->as<IotlbMessage>(), (IotlbMessage{IotlbType::kMiss, IotlbPerm::kRead, Iova{0x5000}, 0, FrontVa{0}}));
  EXPECT_THAT(validate_backend_request(raw_backend(BackendRequest::kIotlbMsg, iotlb(0, 0, 0, 2, 4), 0)), IsOk());
  EXPECT_THAT(validate_backend_request(raw_backend(BackendRequest::kIotlbMsg, iotlb(0, 1, 0, 1, 2), 0)),
              IsErrorWith(VhostUserErrc::kBadField,
                          "BACKEND_IOTLB_MSG: type 2, expected MISS (1) or ACCESS_FAIL (4)"));
  EXPECT_THAT(validate_backend_request(raw_backend(BackendRequest::kIotlbMsg, iotlb(0, 0, 0, 0, 1), 0)),
              IsErrorWith(VhostUserErrc::kBadField, "BACKEND_IOTLB_MSG: perm 0, expected 1..3 (read, write or both)"));
  EXPECT_THAT(validate_backend_request(raw_backend(BackendRequest::kIotlbMsg, iotlb(0, 0, 0, 9, 4), 0)),
              IsErrorWith(VhostUserErrc::kBadField, "BACKEND_IOTLB_MSG: perm 9, expected 1..3 (read, write or both)"));
}

TEST(ValidateBackend, HostNotifierAndInbandCalls) {
  auto with_fd = validate_backend_request(
      raw_backend(BackendRequest::kVringHostNotifierMsg, WireVringArea{3, 0x1000, 0x2000}, 1));
  ASSERT_THAT(with_fd, IsOk());
  EXPECT_EQ(with_fd->as<VringArea>(), (VringArea{3, true, 0x1000, 0x2000}));
  auto remove = validate_backend_request(
      raw_backend(BackendRequest::kVringHostNotifierMsg, WireVringArea{0x103, 0x1000, 0x2000}, 0));
  ASSERT_THAT(remove, IsOk());
  EXPECT_EQ(remove->as<VringArea>(), (VringArea{3, false, 0, 0}));
  EXPECT_THAT(validate_backend_request(raw_backend(BackendRequest::kVringHostNotifierMsg, WireVringArea{3, 0, 0}, 1)),
              IsErrorWith(VhostUserErrc::kBadField, "BACKEND_VRING_HOST_NOTIFIER_MSG: notifier area size 0"));
  EXPECT_THAT(validate_backend_request(raw_backend(BackendRequest::kVringCall, WireVringState{1, 1}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "BACKEND_VRING_CALL: num 1 is reserved and must be 0"));
  EXPECT_THAT(validate_backend_request(raw_backend(BackendRequest::kVringErr, WireVringState{256, 0}, 0)),
              IsErrorWith(VhostUserErrc::kBadField, "BACKEND_VRING_ERR: vring index 256, expected < 256"));
}

// --- Replies ------------------------------------------------------------------------

TEST(ParseReply, U64AndStatusReplies) {
  EXPECT_THAT(
      parse_u64_reply(encode_u64_reply(FrontendRequest::kGetFeatures, 0x140000000), FrontendRequest::kGetFeatures),
      HasValue(0x140000000ull));
  EXPECT_THAT(parse_u64_reply(encode_u64_reply(FrontendRequest::kGetQueueNum, 2), FrontendRequest::kGetFeatures),
              IsErrorWith(VhostUserErrc::kBadReply, "reply to GET_FEATURES expected, got a reply to GET_QUEUE_NUM"));
  Message no_reply_flag = encode_u64_reply(FrontendRequest::kGetFeatures, 1);
  no_reply_flag.set_flags(kVersion);
  EXPECT_THAT(parse_u64_reply(no_reply_flag, FrontendRequest::kGetFeatures),
              IsErrorWith(VhostUserErrc::kBadHeader, "GET_FEATURES: reply without the REPLY flag"));
  Message need_reply = encode_u64_reply(FrontendRequest::kGetFeatures, 1);
  need_reply.set_need_reply(true);
  EXPECT_THAT(parse_u64_reply(need_reply, FrontendRequest::kGetFeatures),
              IsErrorWith(VhostUserErrc::kBadHeader, "GET_FEATURES: NEED_REPLY flag set on a reply"));
  Message short_reply = encode_u64_reply(FrontendRequest::kGetFeatures, 1);
  short_reply.set_payload(std::vector<std::byte>(4));
  EXPECT_THAT(parse_u64_reply(short_reply, FrontendRequest::kGetFeatures),
              IsErrorWith(VhostUserErrc::kBadSize, "GET_FEATURES: payload size 4, expected 8"));

  EXPECT_THAT(parse_status_reply(encode_status_reply(5, 0), 5, Channel::kMain), IsOk());
  EXPECT_THAT(parse_status_reply(encode_status_reply(5, 1), 5, Channel::kMain),
              IsErrorWith(VhostUserErrc::kRemoteError, "SET_MEM_TABLE: back-end reported failure (status 0x1)"));
  EXPECT_THAT(parse_status_reply(encode_status_reply(1, 0x16), 1, Channel::kBackend),
              IsErrorWith(VhostUserErrc::kRemoteError, "BACKEND_IOTLB_MSG: front-end reported failure (status 0x16)"));
}

TEST(ParseReply, VringBaseConfigAndInflight) {
  EXPECT_THAT(parse_vring_base_reply(encode_vring_base_reply({1, 77}), 1), HasValue(VringState{1, 77}));
  EXPECT_THAT(parse_vring_base_reply(encode_vring_base_reply({2, 77}), 1),
              IsErrorWith(VhostUserErrc::kBadReply, "GET_VRING_BASE: reply for vring 2, expected vring 1"));

  ConfigSpace c;
  c.offset = 4;
  c.size = 8;
  c.data[0] = std::byte{0xab};
  auto parsed = parse_config_reply(encode_config_reply(c), 4, 8);
  ASSERT_THAT(parsed, IsOk());
  EXPECT_EQ(parsed->bytes()[0], std::byte{0xab});
  EXPECT_THAT(
      parse_config_reply(encode_config_reply(c), 0, 8),
      IsErrorWith(VhostUserErrc::kBadReply, "GET_CONFIG: reply covers offset 4 size 8, asked for offset 0 size 8"));
  EXPECT_THAT(parse_config_reply(encode_config_error_reply(), 4, 8),
              IsErrorWith(VhostUserErrc::kRemoteError, "GET_CONFIG: back-end reported failure (empty reply)"));

  Message no_fd(static_cast<uint32_t>(FrontendRequest::kGetInflightFd), kVersion | kFlagReply);
  WireInflight w;
  w.mmap_size = 0x1000;
  w.num_queues = 1;
  w.queue_size = 256;
  no_fd.set_payload_struct(w);
  EXPECT_THAT(parse_inflight_reply(no_fd),
              IsErrorWith(VhostUserErrc::kBadFdCount, "GET_INFLIGHT_FD: fd count 0, expected 1"));
}

}  // namespace
}  // namespace vdma::vhost_user
