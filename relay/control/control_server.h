// The control socket: a UNIX stream socket answering one request line per
// connection ("status" or "status json") with the rendered snapshot.
#pragma once

#include <functional>
#include <string>

#include "common/fd.h"
#include "common/result.h"
#include "loop/event_loop.h"

namespace sockrelay {

class ControlServer {
 public:
  using Handler = std::function<std::string(const std::string& request)>;

  // Binds `path` (creating its directory, replacing a stale socket).
  static Result<ControlServer> open(const std::string& path);
  ControlServer(ControlServer&&) = default;
  ~ControlServer();

  Status attach(EventLoop& loop, Handler handler);
  const std::string& path() const { return path_; }

 private:
  ControlServer(Fd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  void serve_one(const Handler& handler);

  Fd fd_;
  std::string path_;
};

// Client side, for `sockrelay status`: sends `request`, returns the reply.
Result<std::string> control_request(const std::string& path, const std::string& request);

}  // namespace sockrelay
