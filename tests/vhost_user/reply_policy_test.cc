// Reply policy: spec replies, REPLY_ACK, and the error-reply-or-close rule,
// including a back-end loop over a socketpair that applies it.
#include "vdma/vhost_user/reply_policy.h"

#include <sys/eventfd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "result_matchers.h"
#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/socket_io.h"
#include "vdma/vhost_user/validate.h"

namespace vdma::vhost_user {
namespace {

using namespace vdma::testing;

constexpr uint64_t kReplyAck = protocol_feature_bit(kProtocolFeatureReplyAck);
constexpr uint32_t code(FrontendRequest r) { return static_cast<uint32_t>(r); }

Message request(FrontendRequest r, bool need_reply) {
  Message m(code(r), need_reply ? (kVersion | kFlagNeedReply) : kVersion);
  return m;
}

const Error kBadField(VhostUserErrc::kBadField, "x");

TEST(ReplyPolicy, SpecRepliesFollowTheMessageTables) {
  using R = FrontendRequest;
  EXPECT_EQ(spec_reply(code(R::kGetFeatures), Channel::kMain, 0), SpecReply::kU64Value);
  EXPECT_EQ(spec_reply(code(R::kGetStatus), Channel::kMain, 0), SpecReply::kU64Value);
  EXPECT_EQ(spec_reply(code(R::kIotlbMsg), Channel::kMain, 0), SpecReply::kU64Status);
  EXPECT_EQ(spec_reply(code(R::kGetVringBase), Channel::kMain, 0), SpecReply::kVringState);
  EXPECT_EQ(spec_reply(code(R::kGetConfig), Channel::kMain, 0), SpecReply::kConfig);
  EXPECT_EQ(spec_reply(code(R::kGetInflightFd), Channel::kMain, 0), SpecReply::kInflight);
  EXPECT_EQ(spec_reply(code(R::kSetMemTable), Channel::kMain, 0), SpecReply::kNone);
  EXPECT_EQ(spec_reply(code(R::kSetVringKick), Channel::kMain, 0), SpecReply::kNone);
  // SET_LOG_BASE is answered only with LOG_SHMFD.
  EXPECT_EQ(spec_reply(code(R::kSetLogBase), Channel::kMain, 0), SpecReply::kNone);
  EXPECT_EQ(spec_reply(code(R::kSetLogBase), Channel::kMain, protocol_feature_bit(kProtocolFeatureLogShmfd)),
            SpecReply::kU64Value);
  EXPECT_EQ(spec_reply(99, Channel::kMain, 0), SpecReply::kNone);
  // The same code on the back-end channel is a different request.
  EXPECT_EQ(spec_reply(1, Channel::kBackend, 0), SpecReply::kNone);
  EXPECT_EQ(spec_reply(static_cast<uint32_t>(BackendRequest::kSharedObjectLookup), Channel::kBackend, 0),
            SpecReply::kU64Status);
}

TEST(ReplyPolicy, AckOnlyWithReplyAckNeedReplyAndNoSpecReply) {
  EXPECT_TRUE(needs_ack(request(FrontendRequest::kSetMemTable, true), Channel::kMain, kReplyAck));
  EXPECT_FALSE(needs_ack(request(FrontendRequest::kSetMemTable, false), Channel::kMain, kReplyAck));
  EXPECT_FALSE(needs_ack(request(FrontendRequest::kSetMemTable, true), Channel::kMain, 0));
  // "no behavioural change" for requests that already have a reply.
  EXPECT_FALSE(needs_ack(request(FrontendRequest::kGetFeatures, true), Channel::kMain, kReplyAck));
  EXPECT_FALSE(needs_ack(request(FrontendRequest::kIotlbMsg, true), Channel::kMain, kReplyAck));
  Message miss = encode_iotlb_miss(Iova{0x1000}, IotlbPerm::kRead);
  miss.set_need_reply(true);
  EXPECT_TRUE(needs_ack(miss, Channel::kBackend, kReplyAck));
}

TEST(ReplyPolicy, FramingAndSystemErrorsCloseTheConnection) {
  const Message m = request(FrontendRequest::kSetMemTable, true);
  for (const Error& e : {Error(VhostUserErrc::kPeerClosed, "x"), Error(VhostUserErrc::kTruncated, "x"),
                         Error(VhostUserErrc::kPayloadTooLarge, "x"), system_error("recvmsg", 9)}) {
    EXPECT_TRUE(is_connection_fatal(e));
    const ErrorDisposition d = error_disposition(m, Channel::kMain, e, kReplyAck);
    EXPECT_EQ(d.action, ErrorAction::kCloseConnection) << e.to_string();
    EXPECT_EQ(d.reason, "the stream is ended or out of step");
  }
  EXPECT_FALSE(is_connection_fatal(Error(VhostUserErrc::kTooManyFds, "x")));
  EXPECT_FALSE(is_connection_fatal(kBadField));
}

TEST(ReplyPolicy, ABadHeaderClosesEvenWithNeedReply) {
  Message m = request(FrontendRequest::kSetMemTable, true);
  m.set_flags(0x2 | kFlagNeedReply);  // version 2
  const ErrorDisposition d =
      error_disposition(m, Channel::kMain, Error(VhostUserErrc::kBadHeader, "x"), kReplyAck);
  EXPECT_EQ(d.action, ErrorAction::kCloseConnection);
  EXPECT_EQ(d.reason, "the header is malformed, so its NEED_REPLY bit cannot be trusted");
}

TEST(ReplyPolicy, RequestsWithAStatusReplyGetAnErrorReplyAlways) {
  const Message iotlb = request(FrontendRequest::kIotlbMsg, false);
  ErrorDisposition d = error_disposition(iotlb, Channel::kMain, kBadField, 0);
  EXPECT_EQ(d.action, ErrorAction::kErrorReply);
  EXPECT_EQ(d.reason, "the request's reply carries a failure status");
  EXPECT_THAT(parse_status_reply(encode_error_reply(iotlb, Channel::kMain, 0), code(FrontendRequest::kIotlbMsg),
                                 Channel::kMain),
              IsErrorWith(VhostUserErrc::kRemoteError, "IOTLB_MSG: back-end reported failure (status 0x1)"));

  const Message config = request(FrontendRequest::kGetConfig, false);
  EXPECT_EQ(error_disposition(config, Channel::kMain, kBadField, 0).action, ErrorAction::kErrorReply);
  const Message empty = encode_error_reply(config, Channel::kMain, 0);
  EXPECT_EQ(empty.size(), 0u);
  EXPECT_TRUE(empty.is_reply());
  EXPECT_EQ(empty.request(), code(FrontendRequest::kGetConfig));

  const Message state = request(FrontendRequest::kSetDeviceStateFd, false);
  const Message r = encode_error_reply(state, Channel::kMain, 0);
  EXPECT_EQ(r.read_payload<WireU64>().value, 0x101u);  // failure, and no fd returned
}

TEST(ReplyPolicy, RequestsWithoutSpecReplyNeedReplyAckAndNeedReply) {
  const Message with = request(FrontendRequest::kSetMemTable, true);
  ErrorDisposition d = error_disposition(with, Channel::kMain, kBadField, kReplyAck);
  EXPECT_EQ(d.action, ErrorAction::kErrorReply);
  EXPECT_EQ(d.reason, "REPLY_ACK is negotiated and NEED_REPLY is set");
  const Message reply = encode_error_reply(with, Channel::kMain, kReplyAck);
  EXPECT_TRUE(reply.is_reply());
  EXPECT_FALSE(reply.needs_reply());
  EXPECT_EQ(reply.read_payload<WireU64>().value, 1u);

  d = error_disposition(with, Channel::kMain, kBadField, 0);
  EXPECT_EQ(d.action, ErrorAction::kCloseConnection);
  EXPECT_EQ(d.reason, "REPLY_ACK is not negotiated, so failure cannot be reported");
  d = error_disposition(request(FrontendRequest::kSetMemTable, false), Channel::kMain, kBadField, kReplyAck);
  EXPECT_EQ(d.action, ErrorAction::kCloseConnection);
  EXPECT_EQ(d.reason, "NEED_REPLY is not set, so failure cannot be reported");
}

TEST(ReplyPolicy, ValueRepliesHaveNoFailureFormSoTheyClose) {
  for (FrontendRequest r : {FrontendRequest::kGetFeatures, FrontendRequest::kGetVringBase,
                            FrontendRequest::kGetInflightFd, FrontendRequest::kPostcopyAdvise}) {
    const ErrorDisposition d = error_disposition(request(r, true), Channel::kMain, kBadField, kReplyAck);
    EXPECT_EQ(d.action, ErrorAction::kCloseConnection) << request_name(r);
    EXPECT_EQ(d.reason, "the request's reply has no failure form");
  }
}

TEST(ReplyPolicy, UnknownRequestIsAnsweredUnderItsOwnCode) {
  const Message unknown(99, kVersion | kFlagNeedReply);
  const Error e(VhostUserErrc::kUnknownRequest, "unknown front-end request 99");
  EXPECT_EQ(error_disposition(unknown, Channel::kMain, e, kReplyAck).action, ErrorAction::kErrorReply);
  const Message reply = encode_error_reply(unknown, Channel::kMain, kReplyAck);
  EXPECT_EQ(reply.request(), 99u);
  EXPECT_THAT(parse_status_reply(reply, 99, Channel::kMain),
              IsErrorWith(VhostUserErrc::kRemoteError, "request 99: back-end reported failure (status 0x1)"));
  EXPECT_EQ(error_disposition(Message(99, kVersion), Channel::kMain, e, kReplyAck).action,
            ErrorAction::kCloseConnection);
}

TEST(ReplyPolicy, LogLineNamesMessageErrorAndReason) {
  const Message m = request(FrontendRequest::kSetMemTable, false);
  const Error e(VhostUserErrc::kBadFdCount, "SET_MEM_TABLE: 3 regions but 2 fds");
  const ErrorDisposition d = error_disposition(m, Channel::kMain, e, kReplyAck);
  EXPECT_EQ(describe_disposition(m, Channel::kMain, e, d),
            "vhost-user SET_MEM_TABLE (5, flags 0x1): vhost_user.bad_fd_count: SET_MEM_TABLE: 3 regions but 2 fds; "
            "closing the connection: NEED_REPLY is not set, so failure cannot be reported");
  const Message unknown(77, kVersion | kFlagNeedReply);
  const Error u(VhostUserErrc::kUnknownRequest, "unknown front-end request 77");
  EXPECT_EQ(describe_disposition(unknown, Channel::kMain, u, error_disposition(unknown, Channel::kMain, u, kReplyAck)),
            "vhost-user request 77 (77, flags 0x9): vhost_user.unknown_request: unknown front-end request 77; "
            "sending an error reply: REPLY_ACK is negotiated and NEED_REPLY is set");
}

// A minimal back-end loop built from the codec: receive, validate, answer
// with a spec reply, an ack, an error reply, or close (by returning, which
// drops the socket).
void serve(UniqueFd owned, uint64_t protocol_features, std::vector<std::string>* log) {
  const int sock = owned.get();
  Message msg;
  for (;;) {
    Result<void> r = recv_message(sock, Channel::kMain, msg);
    Result<FrontendRequestView> v =
        r ? validate_frontend_request(msg) : Result<FrontendRequestView>(r.error());
    if (!v) {
      if (v.error().is(VhostUserErrc::kPeerClosed)) return;
      const ErrorDisposition d = error_disposition(msg, Channel::kMain, v.error(), protocol_features);
      log->push_back(describe_disposition(msg, Channel::kMain, v.error(), d));
      if (d.action == ErrorAction::kCloseConnection) return;
      ASSERT_THAT(send_message(sock, Channel::kMain, encode_error_reply(msg, Channel::kMain, protocol_features)),
                  IsOk());
      continue;
    }
    if (v->request == FrontendRequest::kGetFeatures) {
      ASSERT_THAT(send_message(sock, Channel::kMain, encode_u64_reply(FrontendRequest::kGetFeatures, 0x40000000)),
                  IsOk());
    } else if (needs_ack(msg, Channel::kMain, protocol_features)) {
      ASSERT_THAT(send_message(sock, Channel::kMain, encode_status_reply(msg.request(), 0)), IsOk());
    }
  }
}

TEST(ReplyPolicy, BackendLoopRepliesToWhatItCanAndClosesOtherwise) {
  auto pair = make_socket_pair();
  ASSERT_THAT(pair, IsOk());
  UniqueFd front = std::move((*pair)[0]);
  std::vector<std::string> log;
  std::thread backend(serve, std::move((*pair)[1]), kReplyAck, &log);

  Message reply;
  // A good request with NEED_REPLY is acked.
  Message owner = encode_request(FrontendRequest::kSetOwner);
  owner.set_need_reply(true);
  ASSERT_THAT(send_message(front.get(), Channel::kMain, owner), IsOk());
  ASSERT_THAT(recv_message(front.get(), Channel::kMain, reply), IsOk());
  EXPECT_THAT(parse_status_reply(reply, code(FrontendRequest::kSetOwner), Channel::kMain), IsOk());

  // A malformed SET_VRING_NUM with NEED_REPLY gets an error reply; the session goes on.
  Message bad = encode_vring_state(FrontendRequest::kSetVringNum, {0, 0});
  bad.set_need_reply(true);
  ASSERT_THAT(send_message(front.get(), Channel::kMain, bad), IsOk());
  ASSERT_THAT(recv_message(front.get(), Channel::kMain, reply), IsOk());
  EXPECT_THAT(parse_status_reply(reply, code(FrontendRequest::kSetVringNum), Channel::kMain),
              IsError(VhostUserErrc::kRemoteError));
  ASSERT_THAT(send_message(front.get(), Channel::kMain, encode_request(FrontendRequest::kGetFeatures)), IsOk());
  ASSERT_THAT(recv_message(front.get(), Channel::kMain, reply), IsOk());
  EXPECT_THAT(parse_u64_reply(reply, FrontendRequest::kGetFeatures), HasValue(0x40000000ull));

  // A malformed GET_VRING_BASE cannot be failed in-band: the back-end closes.
  ASSERT_THAT(send_message(front.get(), Channel::kMain, encode_vring_state(FrontendRequest::kGetVringBase, {0, 3})),
              IsOk());
  EXPECT_THAT(recv_message(front.get(), Channel::kMain, reply), IsError(VhostUserErrc::kPeerClosed));
  backend.join();
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[0],
            "vhost-user SET_VRING_NUM (8, flags 0x9): vhost_user.bad_field: SET_VRING_NUM: queue size 0, expected "
            "1..32768; sending an error reply: REPLY_ACK is negotiated and NEED_REPLY is set");
  EXPECT_EQ(log[1],
            "vhost-user GET_VRING_BASE (11, flags 0x1): vhost_user.bad_field: GET_VRING_BASE: num 3 is reserved and "
            "must be 0; closing the connection: the request's reply has no failure form");
}

}  // namespace
}  // namespace vdma::vhost_user
