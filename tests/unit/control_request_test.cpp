// The control socket's request side without sockets (control/control_request.h),
// its counters in `status`, and a socket from systemd that is not the one the
// config names (ControlServer::adopt). Fuzzed too: tests/fuzz/control_request_fuzz.cpp.
#include "control/control_request.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "control/control_server.h"
#include "control/status.h"

namespace sockrelay {
namespace {

TEST(ControlRequest, FramesALineArrivingInPieces) {
  std::string buffer;
  EXPECT_EQ(frame_request(buffer, "sta", 256), RequestFraming::NeedMore);
  EXPECT_EQ(frame_request(buffer, "tus js", 256), RequestFraming::NeedMore);
  EXPECT_EQ(frame_request(buffer, "on\r\nmore", 256), RequestFraming::Line);
  EXPECT_EQ(buffer, "status json\r");
  EXPECT_EQ(parse_control_request(buffer), ControlRequest::StatusJson);
}

TEST(ControlRequest, ALineOfExactlyTheLimitPassesOneByteMoreDoesNot) {
  std::string exact;
  EXPECT_EQ(frame_request(exact, std::string(8, 'a'), 8), RequestFraming::NeedMore);
  EXPECT_EQ(frame_request(exact, "\n", 8), RequestFraming::Line);
  std::string over;
  EXPECT_EQ(frame_request(over, std::string(9, 'a'), 8), RequestFraming::TooLong);
}

TEST(ControlRequest, NamesRequestsAndQuotesUnknownOnes) {
  EXPECT_EQ(parse_control_request("status"), ControlRequest::Status);
  EXPECT_EQ(parse_control_request("status\r"), ControlRequest::Status);
  EXPECT_EQ(parse_control_request("status prometheus"), ControlRequest::StatusPrometheus);
  EXPECT_EQ(parse_control_request("status "), ControlRequest::Unknown);
  EXPECT_EQ(parse_control_request("STATUS"), ControlRequest::Unknown);
  EXPECT_EQ(unknown_request_reply(std::string("st\"a\x01", 5)),
            "error: unknown request \"st\\\"a\\x01\"; known: status, status json, status prometheus\n");
}

TEST(ControlRequest, StatusShowsTheControlSocketsCounters) {
  StatusSnapshot s;
  s.control.path = "/run/sockrelay/control.sock";
  s.control.from_systemd = true;
  s.control.clients = 2;
  s.control.counters.accepted = 9;
  s.control.counters.refused_unknown = 3;
  s.control.counters.timed_out = 1;
  EXPECT_NE(
      format_status_text(s).find(
          "control   /run/sockrelay/control.sock (socket from systemd), clients 2, accepted 9, answered 0, "
          "refused-too-many 0, refused-too-long 0, refused-unknown 3, refused-busy 0, timed-out 1, "
          "closed-before-reply 0\n"),
      std::string::npos)
      << format_status_text(s);
  EXPECT_NE(format_status_json(s).find(
                "\"control\":{\"path\":\"/run/sockrelay/control.sock\",\"from-systemd\":true,"
                "\"clients\":2,\"accepted\":9,"),
            std::string::npos)
      << format_status_json(s);
}

// A listening UNIX socket bound to `path`, as systemd would pass it.
Fd listening_at(const std::string& path) {
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  unlink(path.c_str());
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd.get(), 4) != 0)
    return Fd();
  return fd;
}

TEST(ControlRequest, AdoptedSocketMustBeTheConfigsPathAndItsFileStays) {
  auto dir = std::filesystem::temp_directory_path() / ("sockrelay-adopt-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::string path = (dir / "control.sock").string();
  std::string other = (dir / "other.sock").string();

  auto wrong = ControlServer::adopt(listening_at(other), path);
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().describe(),
            "systemd passed a control socket bound to \"" + other + "\", but [relay] control is \"" + path +
                "\"; the .socket unit needs ListenStream=" + path + ", or set control = \"" + other + "\"");
  Fd datagram(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  auto not_stream = ControlServer::adopt(std::move(datagram), path);
  ASSERT_FALSE(not_stream);
  EXPECT_NE(not_stream.error().describe().find("no listening UNIX stream socket"), std::string::npos);
  {
    auto right = ControlServer::adopt(listening_at(path), path);
    ASSERT_TRUE(right) << right.error().describe();
    EXPECT_TRUE(right->from_systemd());
  }
  EXPECT_TRUE(std::filesystem::exists(path)) << "systemd's socket file is not the relay's to remove";
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sockrelay
