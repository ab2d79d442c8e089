// Misconfiguration and failure: a back-end without ACCESS_PLATFORM in the
// modes that need it, bad topologies, sockets that are not there, too few
// queues, a back-end that never answers. Each is a clear error, never a hang.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "frontend_test_util.h"
#include "vdma/dma/topology.h"
#include "vdma/frontend/connect.h"
#include "vdma/virtio/features.h"
#include "dma_mode_printer.h"

namespace vdma::frontend_testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr uint64_t bit(unsigned b) { return uint64_t{1} << b; }

// What BackendSession offers for the EchoDevice without ACCESS_PLATFORM.
constexpr uint64_t kOfferedWithoutPlatform = bit(vhost_user::testing::kDeviceFeatureBit) |
                                             bit(kFeatureIndirectDesc) | bit(kFeatureEventIdx) |
                                             bit(vhost_user::kFeatureProtocolFeatures) | bit(kFeatureVersion1) |
                                             bit(kFeatureRingPacked);

class NeedsAccessPlatformTest : public ::testing::TestWithParam<DmaMode> {};

TEST_P(NeedsAccessPlatformTest, BackendWithoutAccessPlatformIsRefusedNamingTheOffer) {
  InProcessBackend backend(BackendOptions{.offer_access_platform = false});
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(GetParam()));
  EXPECT_THAT(fe, IsErrorWith(FrontendErrc::kBackendLacks,
                              fmt::format("back-end does not offer ACCESS_PLATFORM; the iommu and restricted modes "
                                          "need it (offered features {:#x})",
                                          kOfferedWithoutPlatform)));
}

INSTANTIATE_TEST_SUITE_P(IommuAndRestricted, NeedsAccessPlatformTest,
                         ::testing::Values(DmaMode::kIommuStrict, DmaMode::kIommuLazy, DmaMode::kIommuPremapped,
                                           DmaMode::kRestricted),
                         [](const ::testing::TestParamInfo<DmaMode>& p) {
                           std::string n(to_string(p.param));
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(FrontendErrors, BypassWorksWithoutAccessPlatform) {
  InProcessBackend backend(BackendOptions{.offer_access_platform = false});
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kBypass));
  ASSERT_THAT(fe, IsOk());
  echo_round_trip(**fe, 0, 4096, 1, false);
}

TEST(FrontendErrors, BadTopologyJsonIsTheTopologyParsersError) {
  auto t = parse_topology(R"({"devices": [{"id": "blk0", "kind": "iommu"}]})");
  EXPECT_THAT(t, IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("iommu_domain")));
  auto syntax = parse_topology("{\"devices\": [");
  EXPECT_THAT(syntax, IsError(DmaErrc::kInvalidConfig));
  auto missing = load_topology("/nonexistent/vdma-topology.json");
  EXPECT_THAT(missing, IsError(BaseErrc::kSystem));
}

TEST(FrontendErrors, TopologyWithoutTheDeviceIsRefused) {
  auto t = parse_topology(R"({"coherent_pool": {"base": "0x4000000", "size": "0x100000"},
                              "devices": [{"id": "net0", "kind": "bypass"}]})");
  ASSERT_THAT(t, IsOk());
  InProcessBackend backend;
  FrontendOptions o = small_options(DmaMode::kBypass);
  o.topology = *t;
  EXPECT_THAT(VhostUserFrontend::create(backend.take_socket(), o),
              IsErrorWith(FrontendErrc::kInvalidOption, "device \"blk0\" is not in the platform topology (1 devices)"));
}

TEST(FrontendErrors, TopologyWhoseMemoryIsInvalidGivesThePlatformError) {
  // A pool of 0x1800 bytes is not a whole number of pages.
  auto t = parse_topology(R"({"coherent_pool": {"base": "0x4000000", "size": "0x1800"},
                              "devices": [{"id": "blk0", "kind": "bypass"}]})");
  ASSERT_THAT(t, IsOk());
  InProcessBackend backend;
  FrontendOptions o = small_options(DmaMode::kBypass);
  o.topology = *t;
  EXPECT_THAT(VhostUserFrontend::create(backend.take_socket(), o), IsError(MemErrc::kInvalidRegion));
}

TEST(FrontendErrors, TopologyOverrideReplacesTheBuiltInOne) {
  // An iommu device described in JSON, run in "iommu-lazy" mode: the file
  // decides the device, the mode the invalidation policy.
  auto t = parse_topology(R"({"coherent_pool": {"base": "0x8000000", "size": "0x100000"},
                              "devices": [{"id": "blk0", "kind": "iommu", "iommu_domain": 3}]})");
  ASSERT_THAT(t, IsOk());
  InProcessBackend backend;
  FrontendOptions o = small_options(DmaMode::kIommuLazy);
  o.topology = *t;
  auto fe = VhostUserFrontend::create(backend.take_socket(), o);
  ASSERT_THAT(fe, IsOk());
  EXPECT_FALSE((*fe)->platform().uses_builtin_topology());
  EXPECT_EQ((*fe)->platform().ram().base(), Gpa{0});
  EXPECT_TRUE(has_feature((*fe)->features(), kFeatureAccessPlatform));
  echo_round_trip(**fe, 1, 10000, 5, false);
  // The buffers went through the IOMMU: their new IOVAs were announced.
  EXPECT_GT((*fe)->stats().updates_announced, 0u);
}

TEST(FrontendErrors, SocketThatIsNotThereNamesThePathAndErrno) {
  const std::string path = "/tmp/vdma-frontend-test-no-such.sock";
  std::filesystem::remove(path);
  EXPECT_THAT(VhostUserFrontend::connect(path, small_options(DmaMode::kBypass)),
              IsErrorWith(FrontendErrc::kConnectFailed,
                          "cannot connect to /tmp/vdma-frontend-test-no-such.sock: No such file or directory"));
}

TEST(FrontendErrors, SocketNobodyListensOnIsRefused) {
  const std::string path = fmt::format("/tmp/vdma-frontend-test-{}.sock", ::getpid());
  std::filesystem::remove(path);
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  ASSERT_EQ(::bind(s.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_THAT(connect_unix_socket(path),
              IsErrorWith(FrontendErrc::kConnectFailed, "cannot connect to " + path + ": Connection refused"));
  std::filesystem::remove(path);
}

TEST(FrontendErrors, TooFewQueuesAreRefused) {
  InProcessBackend backend({}, /*queues=*/1);
  EXPECT_THAT(VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kBypass)),
              IsErrorWith(FrontendErrc::kBackendLacks, "back-end has 1 queues; 2 requested"));
}

TEST(FrontendErrors, QueueCountOutsideTheProtocolIsAnInvalidOption) {
  auto pair = vhost_user::make_socket_pair();
  ASSERT_THAT(pair, IsOk());
  FrontendOptions o = small_options(DmaMode::kBypass);
  o.num_queues = 0;
  EXPECT_THAT(VhostUserFrontend::create(std::move((*pair)[0]), o),
              IsErrorWith(FrontendErrc::kInvalidOption, "num_queues 0 outside 1..256"));
}

TEST(FrontendErrors, SilentBackendTimesOutInsteadOfHanging) {
  auto pair = vhost_user::make_socket_pair();
  ASSERT_THAT(pair, IsOk());
  FrontendOptions o = small_options(DmaMode::kBypass);
  o.reply_timeout = std::chrono::milliseconds(200);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT(VhostUserFrontend::create(std::move((*pair)[0]), o),
              IsErrorWith(FrontendErrc::kDisconnected,
                          "the back-end connection is closed: GET_FEATURES: base.timeout: no reply within 200 ms"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST(FrontendErrors, BackendThatHangsUpDuringSetUpIsDisconnected) {
  auto pair = vhost_user::make_socket_pair();
  ASSERT_THAT(pair, IsOk());
  (*pair)[1].reset();
  EXPECT_THAT(VhostUserFrontend::create(std::move((*pair)[0]), small_options(DmaMode::kBypass)),
              IsErrorWith(FrontendErrc::kDisconnected, StartsWith("the back-end connection is closed: GET_FEATURES: ")));
}

}  // namespace
}  // namespace vdma::frontend_testing
