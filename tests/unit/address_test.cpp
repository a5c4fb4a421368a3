// Endpoint address parsing and formatting, and the config model's names.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
// clang-format off
#include <linux/vm_sockets.h>
// clang-format on

#include <cstddef>
#include <cstring>
#include <string>

#include "config/address.h"
#include "config/model.h"

namespace sockrelay {
namespace {

const sockaddr_in& v4(const SocketAddress& a) { return *reinterpret_cast<const sockaddr_in*>(&a.storage); }
const sockaddr_in6& v6(const SocketAddress& a) { return *reinterpret_cast<const sockaddr_in6*>(&a.storage); }
const sockaddr_un& un(const SocketAddress& a) { return *reinterpret_cast<const sockaddr_un*>(&a.storage); }
const sockaddr_vm& vm(const SocketAddress& a) { return *reinterpret_cast<const sockaddr_vm*>(&a.storage); }

std::string error_of(EndpointKind kind, const std::string& text, bool for_listen = true) {
  auto r = parse_address(kind, text, for_listen);
  if (r.ok()) return "(parsed OK)";
  EXPECT_EQ(r.error().code, 0);
  return r.error().message;
}

std::string fmt(const SocketAddress& a) { return format_address(a.sa(), a.length); }

// ---- inet ----

TEST(ParseAddress, Ipv4) {
  auto r = parse_address(EndpointKind::Udp, "127.0.0.1:5353", true);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->family(), AF_INET);
  EXPECT_EQ(r->length, sizeof(sockaddr_in));
  EXPECT_EQ(ntohs(v4(*r).sin_port), 5353);
  EXPECT_EQ(ntohl(v4(*r).sin_addr.s_addr), INADDR_LOOPBACK);
  EXPECT_EQ(r->text, "127.0.0.1:5353");
  EXPECT_EQ(fmt(*r), "127.0.0.1:5353");
}

TEST(ParseAddress, Ipv4WildcardOnlyForListen) {
  auto r = parse_address(EndpointKind::Udp, "0.0.0.0:53", true);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(v4(*r).sin_addr.s_addr, htonl(INADDR_ANY));
  EXPECT_NE(error_of(EndpointKind::Udp, "0.0.0.0:53", false).find("valid only for listen"),
            std::string::npos);
}

TEST(ParseAddress, Ipv6NeedsBrackets) {
  auto r = parse_address(EndpointKind::Tcp, "[::1]:5353", false);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->family(), AF_INET6);
  EXPECT_EQ(r->length, sizeof(sockaddr_in6));
  EXPECT_EQ(ntohs(v6(*r).sin6_port), 5353);
  EXPECT_TRUE(IN6_IS_ADDR_LOOPBACK(&v6(*r).sin6_addr));
  EXPECT_EQ(fmt(*r), "[::1]:5353");

  EXPECT_TRUE(parse_address(EndpointKind::Udp, "[::]:53", true).ok());
  EXPECT_NE(error_of(EndpointKind::Udp, "[::]:53", false).find("valid only for listen"), std::string::npos);
  EXPECT_EQ(error_of(EndpointKind::Udp, "::1:53"),
            R"(bad udp address "::1:53": IPv6 addresses must be in brackets, e.g. "[::1]:53"; )"
            R"(expected IPv4 "A.B.C.D:PORT" or IPv6 "[ADDR]:PORT")");
  EXPECT_NE(error_of(EndpointKind::Udp, "[::1]").find("missing \":PORT\""), std::string::npos);
  EXPECT_NE(error_of(EndpointKind::Udp, "[::1:53").find("missing \"]\""), std::string::npos);
  EXPECT_NE(error_of(EndpointKind::Udp, "[::g]:53").find("not a numeric IPv6 address"), std::string::npos);
  EXPECT_NE(error_of(EndpointKind::Udp, "[fe80::1%eth0]:53").find("scoped"), std::string::npos);
}

TEST(ParseAddress, InetErrorsSayWhatIsValid) {
  EXPECT_EQ(error_of(EndpointKind::Udp, "1.2.3:80"),
            R"(bad udp address "1.2.3:80": expected IPv4 "A.B.C.D:PORT" or IPv6 "[ADDR]:PORT")");
  EXPECT_EQ(
      error_of(EndpointKind::Tcp, "1.2.3.4"),
      R"(bad tcp address "1.2.3.4": missing ":PORT"; expected IPv4 "A.B.C.D:PORT" or IPv6 "[ADDR]:PORT")");
  EXPECT_NE(error_of(EndpointKind::Udp, "").find("empty address"), std::string::npos);
}

TEST(ParseAddress, HostnamesAreNotResolved) {
  std::string e = error_of(EndpointKind::Udp, "localhost:53");
  EXPECT_NE(e.find("use a numeric address"), std::string::npos) << e;
  EXPECT_NE(e.find("\"localhost\""), std::string::npos) << e;
  EXPECT_NE(error_of(EndpointKind::Tcp, "example.com").find("use a numeric address"), std::string::npos);
}

TEST(ParseAddress, Ports) {
  std::string zero = error_of(EndpointKind::Udp, "127.0.0.1:0");
  EXPECT_NE(zero.find("port 0 is not allowed"), std::string::npos) << zero;
  EXPECT_NE(zero.find("random port"), std::string::npos) << zero;
  EXPECT_NE(zero.find("1 to 65535"), std::string::npos) << zero;
  EXPECT_EQ(error_of(EndpointKind::Udp, "127.0.0.1:65536"),
            R"(bad udp address "127.0.0.1:65536": port 65536 is out of range 1..65535)");
  EXPECT_NE(error_of(EndpointKind::Udp, "127.0.0.1:dns").find("not a number"), std::string::npos);
  EXPECT_NE(error_of(EndpointKind::Udp, "127.0.0.1:-1").find("not a number"), std::string::npos);
  EXPECT_NE(error_of(EndpointKind::Udp, "127.0.0.1:").find("missing port"), std::string::npos);
  auto max = parse_address(EndpointKind::Udp, "127.0.0.1:65535", false);
  ASSERT_TRUE(max.ok());
  EXPECT_EQ(ntohs(v4(*max).sin_port), 65535);
  auto one = parse_address(EndpointKind::Udp, "127.0.0.1:1", false);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(ntohs(v4(*one).sin_port), 1);
}

// ---- unix ----

TEST(ParseAddress, UnixPath) {
  auto r = parse_address(EndpointKind::UnixDgram, "/run/x.sock", false);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->family(), AF_UNIX);
  EXPECT_STREQ(un(*r).sun_path, "/run/x.sock");
  EXPECT_EQ(r->length, offsetof(sockaddr_un, sun_path) + std::strlen("/run/x.sock") + 1);
  EXPECT_EQ(fmt(*r), "/run/x.sock");
}

TEST(ParseAddress, UnixPathLimits) {
  const std::size_t max = sizeof(sockaddr_un::sun_path) - 1;  // 107: room for the NUL
  std::string longest = "/" + std::string(max - 1, 'a');
  auto r = parse_address(EndpointKind::UnixStream, longest, true);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->length, sizeof(sockaddr_un));
  EXPECT_EQ(fmt(*r), longest);
  std::string too_long = longest + "a";
  EXPECT_NE(error_of(EndpointKind::UnixStream, too_long).find("at most 107 fit"), std::string::npos);
}

TEST(ParseAddress, UnixRelativeRejected) {
  EXPECT_EQ(
      error_of(EndpointKind::UnixSeqpacket, "run/x.sock"),
      R"(bad unix-seqpacket address "run/x.sock": must be absolute or @abstract, e.g. "/run/x.sock" or "@name")");
  EXPECT_NE(error_of(EndpointKind::UnixDgram, "").find("empty address"), std::string::npos);
  EXPECT_NE(error_of(EndpointKind::UnixDgram, std::string("/a\0b", 4)).find("NUL"), std::string::npos);
}

TEST(ParseAddress, UnixAbstract) {
  auto r = parse_address(EndpointKind::UnixDgram, "@name", true);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(un(*r).sun_path[0], '\0');
  EXPECT_EQ(std::string(un(*r).sun_path + 1, 4), "name");
  EXPECT_EQ(r->length, offsetof(sockaddr_un, sun_path) + 1 + 4);
  EXPECT_EQ(fmt(*r), "@name");

  // The length is part of an abstract address: "@a" and "@ab" differ.
  auto a = parse_address(EndpointKind::UnixDgram, "@a", true);
  auto ab = parse_address(EndpointKind::UnixDgram, "@ab", true);
  ASSERT_TRUE(a.ok() && ab.ok());
  EXPECT_EQ(a->length + 1, ab->length);
  EXPECT_FALSE(*a == *ab);

  std::string longest = "@" + std::string(sizeof(sockaddr_un::sun_path) - 1, 'x');
  auto l = parse_address(EndpointKind::UnixStream, longest, true);
  ASSERT_TRUE(l.ok()) << l.error().message;
  EXPECT_EQ(l->length, sizeof(sockaddr_un));
  EXPECT_EQ(fmt(*l), longest);
  EXPECT_NE(error_of(EndpointKind::UnixStream, longest + "x").find("at most 107 fit"), std::string::npos);
  EXPECT_NE(error_of(EndpointKind::UnixStream, "@").find("empty"), std::string::npos);
}

// ---- vsock ----

TEST(ParseAddress, VsockNumeric) {
  auto r = parse_address(EndpointKind::VsockStream, "3:1024", false);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->family(), AF_VSOCK);
  EXPECT_EQ(r->length, sizeof(sockaddr_vm));
  EXPECT_EQ(vm(*r).svm_cid, 3u);
  EXPECT_EQ(vm(*r).svm_port, 1024u);
  EXPECT_EQ(fmt(*r), "3:1024");
}

TEST(ParseAddress, VsockNames) {
  auto any = parse_address(EndpointKind::VsockStream, "any:1234", true);
  ASSERT_TRUE(any.ok()) << any.error().message;
  EXPECT_EQ(vm(*any).svm_cid, VMADDR_CID_ANY);
  EXPECT_EQ(fmt(*any), "any:1234");
  EXPECT_NE(error_of(EndpointKind::VsockStream, "any:1234", false).find("valid only for listen"),
            std::string::npos);

  auto local = parse_address(EndpointKind::VsockSeqpacket, "local:5", false);
  ASSERT_TRUE(local.ok());
  EXPECT_EQ(vm(*local).svm_cid, 1u);
  auto host = parse_address(EndpointKind::VsockSeqpacket, "host:5", false);
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(vm(*host).svm_cid, 2u);
  EXPECT_EQ(fmt(*host), "2:5");
}

TEST(ParseAddress, VsockErrors) {
  EXPECT_NE(error_of(EndpointKind::VsockStream, "3:any").find("port \"any\" is not allowed"),
            std::string::npos);
  EXPECT_NE(error_of(EndpointKind::VsockStream, "3:0").find("port 0 is not allowed"), std::string::npos);
  EXPECT_NE(error_of(EndpointKind::VsockStream, "3:4294967295").find("1 to 4294967294"), std::string::npos);
  EXPECT_NE(error_of(EndpointKind::VsockStream, "3:99999999999").find("1 to 4294967294"), std::string::npos);
  auto max_port = parse_address(EndpointKind::VsockStream, "3:4294967294", false);
  ASSERT_TRUE(max_port.ok());
  EXPECT_EQ(vm(*max_port).svm_port, 4294967294u);
  EXPECT_NE(error_of(EndpointKind::VsockStream, "guest:5").find("CID \"guest\" is not valid"),
            std::string::npos);
  EXPECT_NE(error_of(EndpointKind::VsockStream, "4294967295:5").find("is not valid"), std::string::npos);
  EXPECT_EQ(error_of(EndpointKind::VsockStream, "1024"),
            R"(bad vsock-stream address "1024": expected "CID:PORT" with CID a number, "any" (listen only), )"
            R"("local" or "host", and PORT 1..4294967294)");
  EXPECT_NE(error_of(EndpointKind::VsockStream, "1:2:3").find("expected \"CID:PORT\""), std::string::npos);
}

// ---- formatting and equality ----

TEST(FormatAddress, UnnamedAndOddInputs) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  EXPECT_EQ(format_address(reinterpret_cast<sockaddr*>(&sun), sizeof(sa_family_t)), "(unnamed)");
  EXPECT_EQ(format_address(nullptr, 0), "(unnamed)");
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = htons(53);
  EXPECT_EQ(format_address(reinterpret_cast<sockaddr*>(&sin6), sizeof(sin6)), "[::]:53");
}

TEST(SocketAddress, EqualityIsFamilyLengthAndBytes) {
  auto a = parse_address(EndpointKind::Udp, "127.0.0.1:53", true);
  auto b = parse_address(EndpointKind::Tcp, "127.0.0.1:53", true);
  auto c = parse_address(EndpointKind::Udp, "127.0.0.1:54", true);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(*a == *b);  // the kind is not part of the address
  EXPECT_FALSE(*a == *c);
  auto p = parse_address(EndpointKind::UnixDgram, "/x", true);
  auto q = parse_address(EndpointKind::UnixStream, "/x", true);
  ASSERT_TRUE(p.ok() && q.ok());
  EXPECT_TRUE(*p == *q);
  EXPECT_FALSE(*p == *a);
}

// ---- model names ----

TEST(Model, KindNamesRoundTrip) {
  const char* names[] = {
      "udp", "tcp", "unix-dgram", "unix-stream", "unix-seqpacket", "vsock-stream", "vsock-seqpacket"};
  int i = 0;
  for (EndpointKind k : kAllKinds) {
    EXPECT_EQ(kind_name(k), names[i++]);
    EXPECT_EQ(kind_from_name(kind_name(k)), k);
  }
  EXPECT_FALSE(kind_from_name("UDP").has_value());
  EXPECT_FALSE(kind_from_name("vsock-dgram").has_value());
}

TEST(Model, KindProperties) {
  EXPECT_EQ(kind_family(EndpointKind::Udp), AF_INET);
  EXPECT_EQ(kind_family(EndpointKind::Tcp), AF_INET);
  EXPECT_EQ(kind_family(EndpointKind::UnixSeqpacket), AF_UNIX);
  EXPECT_EQ(kind_family(EndpointKind::VsockStream), AF_VSOCK);
  EXPECT_EQ(kind_socktype(EndpointKind::Udp), SOCK_DGRAM);
  EXPECT_EQ(kind_socktype(EndpointKind::UnixDgram), SOCK_DGRAM);
  EXPECT_EQ(kind_socktype(EndpointKind::Tcp), SOCK_STREAM);
  EXPECT_EQ(kind_socktype(EndpointKind::VsockSeqpacket), SOCK_SEQPACKET);
  EXPECT_EQ(kind_socktype(EndpointKind::UnixSeqpacket), SOCK_SEQPACKET);
  EXPECT_TRUE(kind_is_stream(EndpointKind::VsockStream));
  EXPECT_FALSE(kind_is_stream(EndpointKind::UnixSeqpacket));
  EXPECT_FALSE(kind_is_datagram(EndpointKind::UnixSeqpacket));
  EXPECT_TRUE(kind_is_datagram(EndpointKind::Udp));
  EXPECT_FALSE(kind_is_datagram(EndpointKind::Tcp));
}

TEST(Model, EnumNames) {
  EXPECT_EQ(mode_name(Mode::Egress), "egress");
  EXPECT_EQ(mode_name(Mode::Ingress), "ingress");
  EXPECT_EQ(datapath_name(Datapath::Auto), "auto");
  EXPECT_EQ(datapath_name(Datapath::Kernel), "kernel");
  EXPECT_EQ(datapath_name(Datapath::Userspace), "userspace");
  EXPECT_EQ(balance_name(Balance::Single), "single");
  EXPECT_EQ(balance_name(Balance::RoundRobin), "round-robin");
  EXPECT_EQ(balance_name(Balance::Hash), "hash");
  EXPECT_EQ(balance_name(Balance::Broadcast), "broadcast");
  EXPECT_EQ(role_name(Role::Listen), "listen");
  EXPECT_EQ(role_name(Role::Connect), "connect");
  EXPECT_EQ(mode_from_name("ingress"), Mode::Ingress);
  EXPECT_EQ(datapath_from_name("userspace"), Datapath::Userspace);
  EXPECT_EQ(balance_from_name("hash"), Balance::Hash);
  EXPECT_FALSE(balance_from_name("random").has_value());
}

TEST(Model, FindEndpoint) {
  Config c;
  c.endpoints.push_back(Endpoint{.name = "a"});
  c.endpoints.push_back(Endpoint{.name = "b"});
  ASSERT_NE(c.find_endpoint("b"), nullptr);
  EXPECT_EQ(c.find_endpoint("b")->name, "b");
  EXPECT_EQ(c.find_endpoint("c"), nullptr);
}

}  // namespace
}  // namespace sockrelay
