// The data path of one pairing, from the matrix cell: every rule
// choose_datapath and choose_subscriber_datapath apply. plan_route, which
// decides whole routes from them, is tested in route_plan_test.cpp.
#include "matrix/datapath_choice.h"

#include <gtest/gtest.h>

namespace sockrelay {
namespace {

const MatrixCell& cell(EndpointKind s, EndpointKind t, Mode m = Mode::Egress) { return matrix_cell(s, t, m); }

TEST(DatapathChoice, SupportedCellGoesToTheKernel) {
  auto c = choose_datapath(Datapath::Auto, cell(EndpointKind::Udp, EndpointKind::UnixDgram), "");
  EXPECT_TRUE(c.kernel);
  EXPECT_FALSE(c.refused);
  EXPECT_FALSE(c.fell_back);
}

TEST(DatapathChoice, UserspaceIsHonoured) {
  auto c = choose_datapath(Datapath::Userspace, cell(EndpointKind::Udp, EndpointKind::Udp), "");
  EXPECT_FALSE(c.kernel);
  EXPECT_FALSE(c.fell_back);
  EXPECT_NE(c.reason.find("userspace"), std::string::npos);
}

TEST(DatapathChoice, AutoFallsBackOnUnsupportedCellAndSaysWhy) {
  auto c = choose_datapath(Datapath::Auto, cell(EndpointKind::UnixSeqpacket, EndpointKind::Tcp), "");
  EXPECT_FALSE(c.kernel);
  EXPECT_TRUE(c.fell_back);
  EXPECT_NE(c.reason.find("unix-seqpacket"), std::string::npos) << c.reason;
}

TEST(DatapathChoice, KernelOnUnsupportedCellIsRefused) {
  auto c = choose_datapath(Datapath::Kernel,
                           cell(EndpointKind::Tcp, EndpointKind::VsockStream, Mode::Ingress), "");
  EXPECT_TRUE(c.refused);
  EXPECT_NE(c.reason.find("VSOCK"), std::string::npos) << c.reason;
  EXPECT_NE(c.reason.find("auto"), std::string::npos) << "the message should name the fix: " << c.reason;
}

TEST(DatapathChoice, KernelUnavailableRefusesKernelAndFallsBackAuto) {
  const auto& supported = cell(EndpointKind::Udp, EndpointKind::Udp);
  EXPECT_TRUE(choose_datapath(Datapath::Kernel, supported, "needs root").refused);
  auto c = choose_datapath(Datapath::Auto, supported, "needs root");
  EXPECT_TRUE(c.fell_back);
  EXPECT_NE(c.reason.find("needs root"), std::string::npos);
}

TEST(DatapathChoice, CaveatIsNamedOnTheKernelPath) {
  auto c =
      choose_datapath(Datapath::Auto, cell(EndpointKind::Udp, EndpointKind::UnixDgram, Mode::Ingress), "");
  EXPECT_TRUE(c.kernel);
  EXPECT_EQ(c.reason, "sockmap redirect; caveat: ingress can merge datagrams in one recv()");
  EXPECT_EQ(choose_datapath(Datapath::Auto, cell(EndpointKind::Udp, EndpointKind::Udp), "").reason,
            "sockmap redirect");
}

// Datagram <-> connection pairings are bridged in user space: no counter
// says when the psock backlog toward the datagram socket has emptied.
TEST(DatapathChoice, DatagramConnectionPairingsStayInUserSpace) {
  for (auto [from, to] : {std::pair{EndpointKind::Udp, EndpointKind::Tcp},
                          std::pair{EndpointKind::Tcp, EndpointKind::UnixDgram},
                          std::pair{EndpointKind::UnixDgram, EndpointKind::VsockSeqpacket}}) {
    const MatrixCell& bridge = cell(from, to);
    auto c = choose_datapath(Datapath::Auto, bridge, "");
    EXPECT_FALSE(c.kernel) << cell_label(bridge);
    EXPECT_TRUE(c.fell_back);
    EXPECT_NE(c.reason.find("user space because a datagram <-> stream/seqpacket route"), std::string::npos)
        << c.reason;
    EXPECT_NE(c.reason.find("psock backlog toward a datagram socket"), std::string::npos) << c.reason;
    auto k = choose_datapath(Datapath::Kernel, bridge, "");
    EXPECT_TRUE(k.refused);
    EXPECT_EQ(k.reason.rfind("datapath = \"kernel\" but a datagram <-> stream/seqpacket route", 0), 0u)
        << k.reason;
  }
}

// Where this version would not take the kernel anyway, that is the reason
// given, not the missing privilege.
TEST(DatapathChoice, ThisVersionsRuleComesBeforeTheUnavailableKernel) {
  auto c =
      choose_datapath(Datapath::Auto, cell(EndpointKind::UnixStream, EndpointKind::UnixStream), "needs root");
  EXPECT_NE(c.reason.find("only tcp <-> tcp"), std::string::npos) << c.reason;
  EXPECT_EQ(c.reason.find("needs root"), std::string::npos) << c.reason;
  // tcp <-> tcp asked for by name, without BPF: refused for the missing privilege.
  auto k = choose_datapath(Datapath::Kernel, cell(EndpointKind::Tcp, EndpointKind::Tcp), "needs root");
  EXPECT_TRUE(k.refused);
  EXPECT_NE(k.reason.find("the kernel path is unavailable: needs root"), std::string::npos) << k.reason;
  auto a = choose_datapath(Datapath::Auto, cell(EndpointKind::Tcp, EndpointKind::Tcp), "needs root");
  EXPECT_TRUE(a.fell_back);
  EXPECT_EQ(a.reason, "user space because the kernel path is unavailable: needs root");
}

TEST(DatapathChoice, OnlyTcpStreamsRideTheKernelPathAndOnlyWhenAsked) {
  const auto& tcp = matrix_cell(EndpointKind::Tcp, EndpointKind::Tcp, Mode::Egress);
  EXPECT_TRUE(choose_datapath(Datapath::Kernel, tcp, "").kernel);
  auto c = choose_datapath(Datapath::Auto, tcp, "");
  EXPECT_FALSE(c.kernel);
  EXPECT_NE(c.reason.find("no backpressure"), std::string::npos) << c.reason;
  for (auto [from, to] : {std::pair{EndpointKind::UnixStream, EndpointKind::UnixStream},
                          std::pair{EndpointKind::Tcp, EndpointKind::UnixStream},
                          std::pair{EndpointKind::UnixStream, EndpointKind::Tcp},
                          std::pair{EndpointKind::VsockStream, EndpointKind::UnixStream}}) {
    const auto& cell = matrix_cell(from, to, Mode::Egress);
    auto c = choose_datapath(Datapath::Auto, cell, "");
    EXPECT_FALSE(c.kernel) << kind_name(from) << " -> " << kind_name(to);
    EXPECT_TRUE(c.fell_back);
    EXPECT_NE(c.reason.find("psock backlog"), std::string::npos) << c.reason;
    EXPECT_TRUE(choose_datapath(Datapath::Kernel, cell, "").refused)
        << kind_name(from) << " -> " << kind_name(to);
  }
}

// Routes to a subscribe endpoint.
TEST(SubscriberDatapath, RoundRobinIntoAStreamRidesTheKernel) {
  const auto& stream = cell(EndpointKind::Udp, EndpointKind::UnixStream);
  auto c = choose_subscriber_datapath(Datapath::Auto, Balance::RoundRobin, &stream, "");
  EXPECT_TRUE(c.kernel);
  EXPECT_NE(c.reason.find("boundaries"), std::string::npos) << "the caveat is named: " << c.reason;
}

TEST(SubscriberDatapath, BroadcastIsUserSpaceAndKernelIsRefused) {
  const auto& stream = cell(EndpointKind::Udp, EndpointKind::UnixStream);
  auto c = choose_subscriber_datapath(Datapath::Auto, Balance::Broadcast, &stream, "");
  EXPECT_FALSE(c.kernel);
  EXPECT_FALSE(c.refused);
  EXPECT_FALSE(c.fell_back) << "broadcast is user space by design, not a fallback";
  EXPECT_NE(c.reason.find("one skb"), std::string::npos) << c.reason;
  auto k = choose_subscriber_datapath(Datapath::Kernel, Balance::Broadcast, &stream, "");
  EXPECT_TRUE(k.refused);
}

TEST(SubscriberDatapath, SeqpacketFallsBackAndIngressNeedsTheKernel) {
  const auto& seqpacket = cell(EndpointKind::UnixDgram, EndpointKind::UnixSeqpacket);
  auto c = choose_subscriber_datapath(Datapath::Auto, Balance::RoundRobin, &seqpacket, "");
  EXPECT_FALSE(c.kernel);
  EXPECT_TRUE(c.fell_back);
  auto ingress = choose_subscriber_datapath(Datapath::Auto, Balance::RoundRobin, nullptr, "no CAP_BPF");
  EXPECT_TRUE(ingress.refused);
  EXPECT_NE(ingress.reason.find("no CAP_BPF"), std::string::npos) << ingress.reason;
  auto ok = choose_subscriber_datapath(Datapath::Auto, Balance::RoundRobin, nullptr, "");
  EXPECT_TRUE(ok.kernel);
}

// "Ingress needs the kernel" is this one rule, whatever keeps the kernel
// path away: datapath = "userspace", or BPF that cannot load.
TEST(SubscriberDatapath, IngressInUserSpaceIsRefused) {
  auto c = choose_subscriber_datapath(Datapath::Userspace, Balance::RoundRobin, nullptr, "");
  EXPECT_TRUE(c.refused);
  EXPECT_NE(c.reason.find("which only the kernel path can do"), std::string::npos) << c.reason;
  const auto& stream = cell(EndpointKind::Udp, EndpointKind::UnixStream);
  auto egress = choose_subscriber_datapath(Datapath::Userspace, Balance::RoundRobin, &stream, "");
  EXPECT_FALSE(egress.refused);
  EXPECT_FALSE(egress.kernel);
  EXPECT_FALSE(egress.fell_back);
}

}  // namespace
}  // namespace sockrelay
